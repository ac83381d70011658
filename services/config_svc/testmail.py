"""The "Send test mail" button: one real mail through the account's settings, reported stage
by stage, with the server's own words and a hint when something fails (the seed, step 5).

The session code is the sender's (`shared.smtp.SmtpSession`), so a test mail that works
means the sender will work too.
"""

import email.policy
import email.utils
import ssl
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from typing import ClassVar, Literal

from pydantic import BaseModel

from services.config_svc.hints import hint
from shared.smtp import SmtpEndpoint, SmtpSession, SmtpStageError, StageResult

Lang = Literal["en", "ja"]

_SENT: dict[Lang, str] = {"en": "Mail was sent", "ja": "メールを送信しました"}
_SUBJECT: dict[Lang, str] = {"en": "Test mail", "ja": "テストメール"}
_BODY: dict[Lang, str] = {
    "en": "This is a test mail from the mail delivery service.\n\n"
          "It arrived, so the account's settings work: mail can be sent as {address}.\n",
    "ja": "メール配信サービスからのテストメールです。\n\n"
          "このメールが届いていれば、アカウントの設定は正しく、{address} から送信できます。\n",
}


class TestMailStage(BaseModel):
    __test__: ClassVar[bool] = False  # not a pytest test class, despite its name

    stage: str
    ok: bool
    duration_ms: float
    detail: str = ""


class TestMailFailure(BaseModel):
    __test__: ClassVar[bool] = False

    stage: str
    smtp_code: int | None
    smtp_message: str
    exception: str
    hint: str


class TestMailReport(BaseModel):
    __test__: ClassVar[bool] = False

    ok: bool
    message: str  # "Mail was sent" / 「メールを送信しました」, or a one-line summary of the failure
    stages: list[TestMailStage]
    capabilities: dict[str, str]  # EHLO extensions, lower-case names
    auth_mechanisms: list[str]
    failure: TestMailFailure | None = None


async def run_test_mail(endpoint: SmtpEndpoint, *, from_address: str, from_name: str | None,
                        reply_to: str | None, to: str, lang: Lang, ssl_context: ssl.SSLContext,
                        timeout_s: float = 10.0) -> TestMailReport:
    """Send one test mail; never raises for SMTP failures (they are in the report)."""
    stages: list[TestMailStage] = []

    def record(result: StageResult) -> None:
        stages.append(TestMailStage(stage=result.stage, ok=result.ok,
                                    duration_ms=result.duration_ms, detail=result.detail))

    message = build_test_message(from_address=from_address, from_name=from_name,
                                 reply_to=reply_to, to=to, lang=lang)
    session = SmtpSession(endpoint, ssl_context=ssl_context, timeout_s=timeout_s,
                          on_stage=record)
    failure = None
    try:
        await session.send(from_address, to, message)
    except SmtpStageError as error:
        failure = TestMailFailure(
            stage=error.stage, smtp_code=error.code, smtp_message=error.text,
            exception=error.exception,
            hint=hint(error.stage, error.code, error.text, error.exception, endpoint, lang),
        )
    finally:
        await session.close()
    return TestMailReport(
        ok=failure is None,
        message=_SENT[lang] if failure is None else _summary(failure, lang),
        stages=stages, capabilities=session.capabilities,
        auth_mechanisms=session.auth_mechanisms, failure=failure,
    )


def build_test_message(*, from_address: str, from_name: str | None, reply_to: str | None,
                       to: str, lang: Lang) -> bytes:
    """The test mail as it goes over the wire (CRLF line ends)."""
    international = not (from_address + to + (reply_to or "")).isascii()
    # Non-ASCII addresses travel raw (SMTPUTF8); otherwise headers use RFC 2047 words.
    policy = email.policy.SMTPUTF8 if international else email.policy.SMTP
    message = EmailMessage(policy=policy)
    local_part, _, domain = from_address.rpartition("@")
    # username/domain rather than addr_spec: addr_spec refuses a non-ASCII local part.
    message["From"] = Address(display_name=from_name or "", username=local_part, domain=domain)
    message["To"] = to
    if reply_to:
        message["Reply-To"] = reply_to
    message["Subject"] = _SUBJECT[lang]
    message["Date"] = email.utils.format_datetime(datetime.now(UTC))
    message["Message-ID"] = email.utils.make_msgid(domain=_ascii_domain(from_address))
    body = _BODY[lang].format(address=from_address)
    # base64 keeps a Japanese body 7-bit clean for servers without 8BITMIME.
    message.set_content(body, cte="7bit" if body.isascii() else "base64")
    return message.as_bytes()


def pick_language(accept_language: str | None) -> Lang:
    """ja when Japanese is preferred per the header's q-values, else en.

    Each language gets the q of its most specific matching range ("ja-JP", "ja", then "*");
    unlisted languages get 0; a tie goes to English.
    """
    ranges: dict[str, float] = {}
    for item in (accept_language or "").split(","):
        tag, *params = (part.strip() for part in item.split(";"))
        if not tag:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges[tag.lower()] = max(q, ranges.get(tag.lower(), 0.0))
    return "ja" if _quality(ranges, "ja") > _quality(ranges, "en") else "en"


def _quality(ranges: dict[str, float], language: str) -> float:
    specific = [q for tag, q in ranges.items() if tag == language or tag.startswith(language + "-")]
    if specific:
        return max(specific)
    return ranges.get("*", 0.0)


def _summary(failure: TestMailFailure, lang: Lang) -> str:
    reply = failure.smtp_message if failure.smtp_code is None else (
        f"{failure.smtp_code} {failure.smtp_message}")
    reply = " ".join(reply.split())  # multi-line SMTP replies: one line here
    if lang == "ja":
        return f"テストメールの送信に失敗しました({failure.stage}): {reply}"
    return f"Test mail failed at {failure.stage}: {reply}"


def _ascii_domain(address: str) -> str:
    domain = address.rpartition("@")[2] or "localhost"
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain
