"""The sender's security promises, end to end (in-process dispatcher and sender, real broker,
database and SMTP servers): no credentials without the TLS the account asks for, verified
implicit TLS, SMTPUTF8 only where offered, and no header injection on the wire."""

import base64
import email
import email.policy
import uuid
from typing import Any

import orjson
import pytest

from shared.messages import SendJob
from shared.topology import make_message, publish
from tests.integration.dispatcher_fixtures import Dispatcher, request_body
from tests.integration.sender_fixtures import SenderStack, sender_on
from tests.support.certs import Certs, certs_fixture  # noqa: F401 - a fixture
from tests.support.mail import addressed
from tests.support.smtp_servers import (
    hidden_starttls_server,
    implicit_tls_server,
    smtp_server,
)

USER = "news@shop.example.com"
PASSWORD = "tls-only-password"
VICTIM = "victim@example.com"


async def ledger(stack: SenderStack, delivery_id: str) -> dict[str, str]:
    rows = await stack.dispatcher.pool.fetch(
        "SELECT email, state FROM delivery_recipients WHERE delivery_id = $1", delivery_id)
    return {row["email"]: row["state"] for row in rows}


def parsed(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def header_lines(data: bytes) -> list[bytes]:
    """The header block's lines, continuation lines included."""
    return data[:data.index(b"\r\n\r\n")].split(b"\r\n")


def bcc_lines(data: bytes) -> list[bytes]:
    """Every line of the whole message (headers, parts, bodies) that starts with `Bcc`."""
    return [line for line in data.split(b"\r\n") if line.lstrip().lower().startswith(b"bcc")]


# -- TLS ------------------------------------------------------------------------------------


async def test_a_server_hiding_starttls_pauses_the_account_and_never_sees_the_password(
    start_sender: Any,
) -> None:
    async with hidden_starttls_server({USER: PASSWORD}) as server:
        stack = await sender_on(start_sender, server, tls="starttls", smtp_auth=True,
                                smtp_username=USER, smtp_password=PASSWORD)
        body = request_body(account_id=stack.account_id,
                            recipients=addressed(["a@example.com", "b@example.com"]))
        await stack.dispatcher.publish_request(body)

        paused = await stack.wait_event(lambda e: e["type"] == "account.paused")
        assert paused["reason"] == "tls"
        assert "STARTTLS" in paused["smtp_message"]
        assert server.ehlo_names, "the sender never reached the server: nothing was tested"
        assert server.auth_attempts == []  # not one AUTH command: no credentials in clear
        assert server.logins == []
        assert server.messages == []
        assert not stack.of_type("mail.failed")
        assert not stack.of_type("mail.deferred")
        assert await ledger(stack, body["delivery_id"]) == {
            "a@example.com": "queued", "b@example.com": "queued"}
        row = await stack.dispatcher.pool.fetchrow(
            "SELECT a.paused, r.paused_reason FROM accounts a JOIN account_runtime r "
            "ON r.account_id = a.id WHERE a.id = $1", stack.account_id)
        assert (row["paused"], row["paused_reason"]) == (True, "tls")


async def test_implicit_tls_with_the_trusted_ca_logs_in_and_sends(
    start_sender: Any, certs: Certs,
) -> None:
    async with implicit_tls_server(certs, {USER: PASSWORD}) as server:
        stack = await sender_on(start_sender, server, settings={"smtp_ca_file": certs.ca_file},
                                tls="ssl", smtp_auth=True, smtp_username=USER,
                                smtp_password=PASSWORD)
        body = request_body(account_id=stack.account_id,
                            recipients=addressed(["a@example.com", "b@example.com"]))
        await stack.dispatcher.publish_request(body)

        completed = await stack.wait_event(lambda e: e["type"] == "delivery.completed")
        assert (completed["sent"], completed["failed"]) == (2, 0)
        assert server.logins == [USER]
        assert sorted(m.rcpt_tos[0] for m in server.messages) == ["a@example.com",
                                                                   "b@example.com"]
        assert server.connections == 1
        assert not stack.of_type("account.paused")


async def test_implicit_tls_with_a_certificate_nobody_vouches_for_pauses_the_account(
    start_sender: Any, certs: Certs,
) -> None:
    async with implicit_tls_server(certs, {USER: PASSWORD}) as server:
        # The system's CAs only.
        stack = await sender_on(start_sender, server, tls="ssl", smtp_auth=True,
                                smtp_username=USER, smtp_password=PASSWORD)
        body = request_body(account_id=stack.account_id,
                            recipients=addressed(["a@example.com"]))
        await stack.dispatcher.publish_request(body)

        paused = await stack.wait_event(lambda e: e["type"] == "account.paused")
        assert paused["reason"] == "tls"
        assert "certificate" in paused["smtp_message"].lower()
        assert server.auth_attempts == []
        assert server.messages == []
        assert not stack.of_type("mail.failed")
        assert await ledger(stack, body["delivery_id"]) == {"a@example.com": "queued"}


# -- SMTPUTF8 -------------------------------------------------------------------------------

UTF8_LOCAL = "山田@example.com"
IDN_DOMAIN = "user@例え.jp"  # ASCII local part: goes as xn--, no SMTPUTF8 needed


async def test_a_utf8_address_goes_with_smtputf8_to_a_server_that_offers_it(
    start_sender: Any,
) -> None:
    async with smtp_server(smtputf8=True) as server:
        stack = await sender_on(start_sender, server)
        body = request_body(account_id=stack.account_id,
                            recipients=addressed([UTF8_LOCAL, "a@example.com", IDN_DOMAIN]))
        await stack.dispatcher.publish_request(body)

        completed = await stack.wait_event(lambda e: e["type"] == "delivery.completed")
        assert (completed["sent"], completed["failed"]) == (3, 0)
        by_rcpt = {m.rcpt_tos[0]: m for m in server.messages}
        assert set(by_rcpt) == {UTF8_LOCAL, "a@example.com", "user@xn--r8jz45g.jp"}
        assert "SMTPUTF8" in by_rcpt[UTF8_LOCAL].mail_options
        # Only the mail that needs it asks for it.
        assert "SMTPUTF8" not in by_rcpt["a@example.com"].mail_options
        assert "SMTPUTF8" not in by_rcpt["user@xn--r8jz45g.jp"].mail_options
        # The header carries the same raw UTF-8 address as the envelope (RFC 6532).
        utf8_mail = email.message_from_string(by_rcpt[UTF8_LOCAL].data.decode("utf-8"),
                                              policy=email.policy.default)
        assert utf8_mail["To"].addresses[0].addr_spec == UTF8_LOCAL
        assert set((await ledger(stack, body["delivery_id"])).values()) == {"sent"}


async def test_a_utf8_address_fails_alone_and_for_good_without_smtputf8(
    start_sender: Any,
) -> None:
    async with smtp_server(smtputf8=False) as server:
        stack = await sender_on(start_sender, server)
        body = request_body(account_id=stack.account_id,
                            recipients=addressed(["a@example.com", UTF8_LOCAL, IDN_DOMAIN]))
        await stack.dispatcher.publish_request(body)

        completed = await stack.wait_event(lambda e: e["type"] == "delivery.completed")
        assert (completed["sent"], completed["failed"], completed["total"]) == (2, 1, 3)
        [failed] = stack.of_type("mail.failed")
        assert failed["recipient"] == UTF8_LOCAL
        assert (failed["stage"], failed["permanent"], failed["outcome"]) == (
            "recipient", True, "failed")
        assert "SMTPUTF8" in failed["smtp_message"]
        assert not stack.of_type("mail.deferred")
        assert not stack.of_type("account.paused")
        assert sorted(m.rcpt_tos[0] for m in server.messages) == [
            "a@example.com", "user@xn--r8jz45g.jp"]
        assert await ledger(stack, body["delivery_id"]) == {
            "a@example.com": "sent", UTF8_LOCAL: "failed", IDN_DOMAIN: "sent"}


# -- header injection -----------------------------------------------------------------------

BREAKS = {
    "crlf": f"\r\nBcc: {VICTIM}",
    "lf": f"\nBcc: {VICTIM}",
    "cr": f"\rBcc: {VICTIM}",
    "nel": f"\x85Bcc: {VICTIM}",
    "line separator": f"\u2028Bcc: {VICTIM}",
    "q word": "=?utf-8?q?x=0D=0ABcc:_victim@example.com?=",
    "Q word, upper case": "=?UTF-8?Q?x=0d=0aBcc:_victim@example.com?=",
    "b word": "=?utf-8?b?" + base64.b64encode(f"x\r\nBcc: {VICTIM}".encode()).decode() + "?=",
}


def injected_requests(account_id: str) -> dict[str, dict]:
    """One request per (place, payload): subject, recipient name, custom header value, and
    a var that goes into the subject."""
    requests = {}
    for label, payload in BREAKS.items():
        requests[f"subject, {label}"] = request_body(
            account_id=account_id, subject=f"Hello {payload}",
            recipients=addressed(["a@example.com"]))
        requests[f"name, {label}"] = request_body(
            account_id=account_id,
            recipients=[{"email": "a@example.com", "name": f"Yamada {payload}",
                         "vars": {"plan": "gold"}}])
        requests[f"header, {label}"] = request_body(
            account_id=account_id, headers={"X-Campaign": f"nov {payload}"},
            recipients=addressed(["a@example.com"]))
        requests[f"var in subject, {label}"] = request_body(
            account_id=account_id, subject="Hello {{who}}",
            recipients=[{"email": "a@example.com", "name": "Yamada",
                         "vars": {"plan": "gold", "who": f"you {payload}"}}])
    return requests


async def outcomes(dispatcher: Dispatcher, delivery_ids: set[str],
                   timeout: float = 30) -> dict[str, dict]:
    """delivery_id -> its delivery.rejected or delivery.accepted event."""
    found: dict[str, dict] = {}
    while not delivery_ids <= found.keys():
        event = await dispatcher.next_event(timeout=timeout)
        if event["type"] in ("delivery.rejected", "delivery.accepted"):
            found.setdefault(event["delivery_id"], event)
    return found


LONG_SUBJECT = ("【重要】十一月の定期メンテナンスと新しいお支払い方法についてのお知らせ、"
                "ご利用中のサービスは期間中も引き続きご利用いただけますが、一部の機能が"
                "一時的に停止しますのでご注意ください")


async def test_header_injection_is_refused_before_anything_reaches_the_wire(
    start_sender: Any,
) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server)
        bad = injected_requests(stack.account_id)
        for body in bad.values():
            await stack.dispatcher.publish_request(body)
        benign = request_body(account_id=stack.account_id, subject=LONG_SUBJECT,
                              recipients=addressed(["good@example.com"]))
        await stack.dispatcher.publish_request(benign)

        found = await outcomes(stack.dispatcher,
                               {b["delivery_id"] for b in bad.values()} | {benign["delivery_id"]})
        verdicts = {label: (found[body["delivery_id"]]["type"],
                            found[body["delivery_id"]].get("reason"))
                    for label, body in bad.items()}
        assert verdicts == dict.fromkeys(bad, ("delivery.rejected", "invalid_request"))
        assert found[benign["delivery_id"]]["type"] == "delivery.accepted"
        await stack.wait_event(lambda e: e["type"] == "delivery.completed"
                               and e["delivery_id"] == benign["delivery_id"])

    assert await stack.dispatcher.pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE delivery_id = ANY($1)",
        [b["delivery_id"] for b in bad.values()]) == 0
    [received] = server.messages  # the benign mail, and nothing else
    assert received.rcpt_tos == ["good@example.com"]
    assert bcc_lines(received.data) == []
    assert b"victim" not in received.data.lower()
    lines = header_lines(received.data)
    subjects = [i for i, line in enumerate(lines) if line.lower().startswith(b"subject:")]
    assert len(subjects) == 1
    folded = 0  # the long subject's continuation lines
    while lines[subjects[0] + folded + 1].startswith(b" "):
        folded += 1
    assert folded >= 2
    mail = parsed(received.data)
    assert mail.get_all("Subject") == [LONG_SUBJECT]
    assert mail.get_all("Bcc") is None


@pytest.mark.parametrize("headers", [
    {"X-Campaign\n": "nov"},  # a line break at the end of the name
    {"X-Campaign": "nov", "x-campaign": f"Bcc: {VICTIM}"},  # one header twice
], ids=["name with a line break", "name twice"])
async def test_custom_headers_the_composer_cannot_write_are_refused_by_the_dispatcher(
    start_sender: Any, headers: dict[str, str],
) -> None:
    """Whatever the dispatcher accepts, the sender must be able to compose: a header it
    refuses to write fails the delivery's every job, again and again."""
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server)
        body = request_body(account_id=stack.account_id, headers=headers,
                            recipients=addressed(["a@example.com"]))
        await stack.dispatcher.publish_request(body)
        [outcome] = (await outcomes(stack.dispatcher, {body["delivery_id"]})).values()
        if outcome["type"] == "delivery.accepted":
            try:  # the least to expect then: its recipient settles, one way or the other
                await stack.wait_event(lambda e: e["type"] == "delivery.completed", timeout=8)
            except TimeoutError:
                pytest.fail(f"{headers!r} was accepted and its recipient never settles: "
                            f"{await ledger(stack, body['delivery_id'])} (the sender cannot "
                            "compose it and requeues the job; see the log)")
            pytest.fail(f"{headers!r} was accepted")
        assert (outcome["type"], outcome["reason"]) == ("delivery.rejected", "invalid_request")
        assert server.messages == []


@pytest.mark.parametrize(("subject", "recipient"), [
    # An encoded word cut in two: the template holds its frame, the value its payload. The
    # dispatcher checks each alone; the composer must keep the joined text literal.
    ("Hello =?utf-8?q?x{{who}}?=",
     {"email": "a@example.com", "name": "Yamada",
      "vars": {"plan": "gold", "who": "=0D=0ABcc:_victim@example.com"}}),
    ("Hello =?utf-8?q?{{name}}?=",
     {"email": "a@example.com", "name": "x=0D=0ABcc:_victim@example.com",
      "vars": {"plan": "gold"}}),
], ids=["var", "name"])
async def test_an_encoded_word_assembled_from_template_and_value_never_becomes_a_header(
    start_sender: Any, subject: str, recipient: dict,
) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server)
        body = request_body(account_id=stack.account_id, subject=subject,
                            recipients=[recipient])
        await stack.dispatcher.publish_request(body)
        [outcome] = (await outcomes(stack.dispatcher, {body["delivery_id"]})).values()
        print(f"the dispatcher's answer: {outcome['type']}")
        if outcome["type"] == "delivery.accepted":
            await stack.wait_event(lambda e: e["type"] == "delivery.completed")

    if outcome["type"] == "delivery.rejected":
        assert server.messages == []
        return
    # Accepted: then the text must reach the reader literally, as one Subject line.
    [received] = server.messages
    assert bcc_lines(received.data) == []
    mail = parsed(received.data)
    assert mail.get_all("Bcc") is None
    values = {"who": recipient["vars"].get("who", ""), "name": recipient["name"]}
    literal = subject.replace("{{who}}", values["who"]).replace("{{name}}", values["name"])
    assert mail.get_all("Subject") == [literal]


async def test_a_forged_job_that_bypasses_the_dispatcher_cannot_inject_headers(
    start_sender: Any,
) -> None:
    """Jobs carry the recipient's name and vars themselves: whoever can publish to
    `mail.send` skips the dispatcher's checks. The composer must still refuse or neutralise."""
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server)
        pool = stack.dispatcher.pool
        delivery_id = f"forged-{uuid.uuid4().hex[:12]}"
        jobs = [
            {"email": "a@example.com", "name": f"Yamada\r\nBcc: {VICTIM}"},
            {"email": "b@example.com", "name": "Yamada", "vars": {"who": f"x\r\nBcc: {VICTIM}"}},
            {"email": f"c@example.com\r\nBcc: {VICTIM}", "name": "Yamada"},
            {"email": "d@example.com", "name": "=?utf-8?q?x=0D=0ABcc:_victim@example.com?="},
        ]
        await pool.execute(
            "INSERT INTO deliveries (delivery_id, request_sha256, account_id, subject, "
            "text_body, total, accepted_at) VALUES ($1, '\\x00', $2, 'Hi {{who}}', 'hi', $3, "
            "now())", delivery_id, stack.account_id, len(jobs))
        for index, job in enumerate(jobs):
            await pool.execute(
                "INSERT INTO delivery_recipients (delivery_id, idx, email, state, queued_at) "
                "VALUES ($1, $2, $3, 'queued', now())", delivery_id, index,
                f"r{index}@example.com")
            job.setdefault("vars", {"who": "you"})
            send_job = SendJob(job_id=f"{delivery_id}:{index}", delivery_id=delivery_id,
                               account_id=stack.account_id, index=index, **job)
            exchange = await stack.dispatcher.channel.get_exchange(
                stack.dispatcher.topology.send_exchange)
            await publish(exchange, stack.account_id, make_message(
                orjson.dumps(send_job.model_dump(mode="json")), message_id=send_job.job_id,
                type_="mail.send"))

        completed = await stack.wait_event(lambda e: e["type"] == "delivery.completed")
        assert (completed["sent"], completed["failed"]) == (1, 3)
        failed = {e["recipient"]: e for e in stack.of_type("mail.failed")}
        assert set(failed) == {j["email"] for j in jobs[:3]}
        assert all(e["permanent"] and e["smtp_message"].startswith("not sendable")
                   for e in failed.values())

    # The three with a line break never left; the encoded word went as literal text.
    [received] = server.messages
    assert received.rcpt_tos == ["d@example.com"]
    assert bcc_lines(received.data) == []
    mail = parsed(received.data)
    assert mail.get_all("Bcc") is None
    assert mail["To"].addresses[0].display_name == jobs[3]["name"]
