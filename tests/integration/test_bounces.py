"""Bounces from bytes to effect (issue 15): a delivery sent through a test SMTP server, then
bounce messages built as real MTAs build them, quoting the original's headers as the server
received them, handed to the sender's bounce intake (the mailbox reader's part)."""

import uuid
from typing import Any

from services.sender.bounces.intake import BounceIntake
from services.sender.bounces.verp import Verp
from tests.integration.accounts_fixtures import KEY
from tests.integration.dispatcher_fixtures import request_body
from tests.integration.sender_fixtures import SenderStack, sender_on
from tests.integration.test_sender import ledger_states
from tests.support.mail import recipients
from tests.support.smtp_servers import SmtpTestServer, smtp_server
from tests.unit import bounce_corpus


def returned(server: SmtpTestServer, rcpt: str, *, status: str, diagnostic: str,
             complaint: bool = False) -> bytes:
    """A DSN (or a feedback report) for the mail `server` received for `rcpt`, with the
    original's headers quoted, as an MTA writes it."""
    mail = next(m for m in server.messages if m.rcpt_tos == [rcpt])
    headers = mail.data.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "\n")
    if complaint:
        raw = bounce_corpus.COMPLAINT.decode()
        return raw.replace("<watanabe@hotmail.example>", f"<{rcpt}>").replace(
            bounce_corpus.QUOTED, headers + "\n").encode()
    raw = bounce_corpus.dsn(reporting="mx.example.jp", recipient=rcpt, action="failed",
                            status=status, diagnostic=f"smtp; {diagnostic}",
                            remote="mx1.example.jp", human="could not be delivered")
    return raw.decode().replace(bounce_corpus.QUOTED, headers + "\n").encode()


async def three_sent(start_sender: Any, server: SmtpTestServer
                     ) -> tuple[SenderStack, dict, BounceIntake, list[str]]:
    """A sender on `server`, a delivery to three addresses of this test's own (r0..r2 with a
    prefix: the suppressions it causes must not reach another test's recipients) sent, and
    the bounce intake."""
    stack = await sender_on(start_sender, server)
    prefix = f"b{uuid.uuid4().hex[:8]}-r"
    body = request_body(account_id=stack.account_id, recipients=recipients(3, prefix=prefix))
    await stack.dispatcher.publish_request(body)
    await stack.completed(body["delivery_id"])
    addresses = [f"{prefix}{i}@example.com" for i in range(3)]
    return stack, body, BounceIntake(stack.dispatcher.pool, Verp([KEY])), addresses


async def suppressed(stack: SenderStack, address: str) -> Any:
    return await stack.dispatcher.pool.fetchrow(
        "SELECT reason, source FROM suppressions WHERE email_key = lower($1)", address)


async def test_a_hard_bounce_marks_the_recipient_announces_it_and_suppresses_the_address(
    start_sender: Any,
) -> None:
    async with smtp_server() as server:
        stack, body, intake, (r0, r1, _) = await three_sent(start_sender, server)
        raw = returned(server, r1, status="5.1.1",
                       diagnostic=f"550 5.1.1 <{r1}>: User unknown")
        handled = await intake.handle(raw, stack.account_id)
        assert (handled.report, handled.bounced, handled.suppressed) == ("dsn", 1, 1)
        stack.relay.wake()
        event = await stack.wait_event(lambda e: e["type"] == "mail.bounced")
        assert (event["recipient"], event["kind"], event["status"]) == (
            r1, "hard", "5.1.1")
        assert event["diagnostic"] == f"550 5.1.1 <{r1}>: User unknown"
        assert event["remote_mta"] == "mx1.example.jp"
        assert event["delivery_id"] == body["delivery_id"]
        assert event["metadata"] == {"crm_delivery": 123}
        assert await ledger_states(stack, body["delivery_id"]) == {"sent": 2, "bounced": 1}
        assert dict(await suppressed(stack, r1)) == {
            "reason": "hard", "source": "bounce"}

        # The same bounce again (a second copy in the mailbox): nothing more.
        again = await intake.handle(raw, stack.account_id)
        assert again.bounced == 0

        # The next delivery to the address leaves it out.
        following = request_body(account_id=stack.account_id, recipients=[
            {"email": address, "name": "n", "vars": {"plan": "gold"}} for address in (r0, r1)])
        await stack.dispatcher.publish_request(following)
        completed = await stack.completed(following["delivery_id"])
        assert (completed["sent"], completed["suppressed"]) == (1, 1)
    # r1 got the first delivery only.
    assert sum(m.rcpt_tos == [r1] for m in server.messages) == 1


async def test_a_policy_bounce_never_suppresses_and_a_complaint_does(
    start_sender: Any,
) -> None:
    async with smtp_server() as server:
        stack, body, intake, (r0, _, r2) = await three_sent(start_sender, server)
        policy = await intake.handle(returned(
            server, r0, status="5.7.1",
            diagnostic="550 5.7.1 Service unavailable; client blocked using Spamhaus"))
        assert (policy.bounced, policy.suppressed) == (1, 0)
        assert await suppressed(stack, r0) is None
        complaint = await intake.handle(returned(server, r2, status="",
                                                 diagnostic="", complaint=True))
        assert (complaint.report, complaint.bounced, complaint.suppressed) == (
            "complaint", 1, 1)
        assert dict(await suppressed(stack, r2)) == {
            "reason": "complaint", "source": "complaint"}
        assert await ledger_states(stack, body["delivery_id"]) == {"sent": 1, "bounced": 2}
        kinds = await stack.dispatcher.pool.fetch(
            "SELECT email, bounce_kind FROM delivery_recipients WHERE delivery_id = $1 "
            "AND state = 'bounced' ORDER BY idx", body["delivery_id"])
        assert [(r["email"], r["bounce_kind"]) for r in kinds] == [
            (r0, "policy"), (r2, "complaint")]


async def test_an_unmatched_bounce_is_kept_and_an_auto_reply_ignored(
    start_sender: Any,
) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server)
        intake = BounceIntake(stack.dispatcher.pool, Verp([KEY]))
        stranger = bounce_corpus.POSTFIX_UNKNOWN.replace(
            bounce_corpus.ORIGINAL_ID.encode(), b"<never-sent-by-us@elsewhere.example>")
        handled = await intake.handle(stranger, stack.account_id)
        assert (handled.bounced, handled.unmatched) == (0, 1)
        kept = await stack.dispatcher.pool.fetchrow(
            "SELECT report, recipient, message_id FROM bounces_unmatched "
            "WHERE message_id = '<never-sent-by-us@elsewhere.example>' ORDER BY id DESC")
        assert (kept["report"], kept["recipient"]) == ("dsn", "tanaka@example.jp")
        vacation = await intake.handle(bounce_corpus.VACATION, stack.account_id)
        assert (vacation.report, vacation.bounced, vacation.unmatched) == ("autoreply", 0, 0)
