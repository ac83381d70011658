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
from typing import ClassVar

from pydantic import BaseModel

from services.config_svc.hints import hint
from services.config_svc.i18n import Lang, translator
from shared.smtp import SmtpEndpoint, SmtpSession, SmtpStageError, StageResult

# English msgids of the service's catalog (i18n.py), which holds their Japanese.
_SENT = "Mail was sent"
_FAILED = "Test mail failed at {stage}: {reply}"
_SUBJECT = "Test mail"
_BODY = ("This is a test mail from the mail delivery service.\n\n"
         "It arrived, so the account's settings work: mail can be sent as {address}.\n")


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
        message=translator(lang)(_SENT) if failure is None else _summary(failure, lang),
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
    message["Subject"] = translator(lang)(_SUBJECT)
    message["Date"] = email.utils.format_datetime(datetime.now(UTC))
    message["Message-ID"] = email.utils.make_msgid(domain=_ascii_domain(from_address))
    body = translator(lang)(_BODY).format(address=from_address)
    # base64 keeps a Japanese body 7-bit clean for servers without 8BITMIME.
    message.set_content(body, cte="7bit" if body.isascii() else "base64")
    return message.as_bytes()


def _summary(failure: TestMailFailure, lang: Lang) -> str:
    reply = failure.smtp_message if failure.smtp_code is None else (
        f"{failure.smtp_code} {failure.smtp_message}")
    reply = " ".join(reply.split())  # multi-line SMTP replies: one line here
    return translator(lang)(_FAILED).format(stage=failure.stage, reply=reply)


def _ascii_domain(address: str) -> str:
    domain = address.rpartition("@")[2] or "localhost"
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain
