"""The bounce mailboxes, end to end (issue 15): a delivery sent through a test SMTP server,
bounces for its recipients built as real MTAs build them (quoting the headers the server
received) and delivered into the account's mailbox on the stack's Dovecot, read by the
sender's reader over IMAP or POP3 with TLS: the row, the counts, `mail.bounced`, the
suppression and the next delivery; VERP; a complaint; an auto-reply; a policy bounce; an
unmatched one; and the removal from the mailbox only after the commit."""

import asyncio
import ssl
import uuid
from datetime import timedelta
from typing import Any

import pytest

from services.sender import store
from services.sender.bounces.intake import BounceIntake, FromMailbox
from services.sender.bounces.mailbox import MailboxError, MailboxReader
from services.sender.bounces.reader import (
    MailboxPoller,
    Watched,
    WatchedRef,
    watched_mailboxes,
)
from services.sender.bounces.verp import Verp
from shared.crypto import SecretBox
from tests.integration.accounts_fixtures import KEY
from tests.integration.dispatcher_fixtures import request_body
from tests.integration.sender_fixtures import SenderStack, configure_account, sender_on
from tests.integration.test_bounces import returned
from tests.integration.test_sender import ledger_states
from tests.support.dovecot import HOST, Dovecot
from tests.support.mail import recipients
from tests.support.smtp_servers import smtp_server
from tests.support.waiting import eventually
from tests.unit import bounce_corpus

VERP_BASE = "bounces@shop.example.com"


@pytest.fixture
def dovecot() -> Dovecot:
    return Dovecot.from_env()


async def with_mailbox(stack: SenderStack, dovecot: Dovecot, protocol: str, tls: str,
                       **fields: Any) -> str:
    """The stack's account reads a new mailbox of its own; its Dovecot user name."""
    user = dovecot.new_user()
    await configure_account(
        stack.dispatcher.pool, stack.account_id, bounce_protocol=protocol, bounce_host=HOST,
        bounce_port=dovecot.port(protocol, tls), bounce_tls=tls, bounce_username=user,
        bounce_password=dovecot.password, bounce_poll_s=10, **fields)
    return user


async def watched(stack: SenderStack, dovecot: Dovecot, user: str, protocol: str,
                  tls: str) -> Watched:
    """What the reader makes of the accounts table for this test's mailbox."""
    rows = await store.bounce_accounts(stack.dispatcher.pool)
    return watched_mailboxes(rows, SecretBox([KEY]))[dovecot.mailbox(user, protocol, tls).key]


def poller(stack: SenderStack, dovecot: Dovecot, **changes: Any) -> MailboxPoller:
    options = {"timeout_s": 5, "lease_ttl_s": 30, "batch": 100, **changes}
    return MailboxPoller(
        stack.dispatcher.pool,
        BounceIntake(stack.dispatcher.pool, Verp([KEY]), soft_limit=3,
                     soft_window=timedelta(days=30)),
        dovecot.ssl_context(), f"reader-{uuid.uuid4().hex[:6]}", **options)


async def sent(stack: SenderStack, count: int) -> tuple[dict, list[str]]:
    """A delivery to addresses of this test's own, sent."""
    prefix = f"m{uuid.uuid4().hex[:8]}-r"
    body = request_body(account_id=stack.account_id, recipients=recipients(count, prefix))
    await stack.dispatcher.publish_request(body)
    await stack.completed(body["delivery_id"])
    return body, [f"{prefix}{i}@example.com" for i in range(count)]


async def sending_with_mailbox(start_sender: Any, server: Any, dovecot: Dovecot,
                               protocol: str, tls: str, count: int, **fields: Any
                               ) -> tuple[SenderStack, str, dict, list[str]]:
    """A sender on `server` whose account reads a new mailbox (`fields`: more of the
    account's), and a delivery of `count` sent: the stack, the mailbox's user, the request,
    its addresses."""
    stack = await sender_on(start_sender, server, **fields)
    user = await with_mailbox(stack, dovecot, protocol, tls)
    body, addresses = await sent(stack, count)
    return stack, user, body, addresses


async def row_of(stack: SenderStack, delivery_id: str, email: str) -> Any:
    return await stack.dispatcher.pool.fetchrow(
        "SELECT state, bounce_kind, bounce_status, bounce_diagnostic FROM delivery_recipients "
        "WHERE delivery_id = $1 AND email = $2", delivery_id, email)


async def suppression(stack: SenderStack, address: str) -> Any:
    return await stack.dispatcher.pool.fetchrow(
        "SELECT reason, source FROM suppressions WHERE email_key = lower($1)", address)


@pytest.mark.parametrize(("protocol", "tls"), [("imap", "starttls"), ("pop3", "ssl")])
async def test_a_bounce_in_the_mailbox_is_matched_announced_suppressed_and_removed(
    start_sender: Any, dovecot: Dovecot, protocol: str, tls: str,
) -> None:
    async with smtp_server() as server:
        stack, user, body, (r0, r1, r2) = await sending_with_mailbox(
            start_sender, server, dovecot, protocol, tls, 3)
        diagnostic = f"550 5.1.1 <{r1}>: Recipient address rejected: User unknown"
        stranger = bounce_corpus.POSTFIX_UNKNOWN.replace(
            bounce_corpus.ORIGINAL_ID.encode(), f"<{uuid.uuid4().hex}@elsewhere>".encode())
        await dovecot.deliver(
            user, returned(server, r1, status="5.1.1", diagnostic=diagnostic),
            bounce_corpus.VACATION, stranger,
            returned(server, r2, status="", diagnostic="", complaint=True))

        reader = poller(stack, dovecot)
        mailbox = await watched(stack, dovecot, user, protocol, tls)
        done = await reader.read_once(mailbox)
        assert (done.read, done.removed, done.left) == (4, 3, 0)

        row = await row_of(stack, body["delivery_id"], r1)
        assert (row["state"], row["bounce_kind"], row["bounce_status"]) == (
            "bounced", "hard", "5.1.1")
        assert row["bounce_diagnostic"] == diagnostic  # the server's words, without "smtp;"
        stack.relay.wake()
        event = await stack.wait_event(
            lambda e: e["type"] == "mail.bounced" and e["recipient"] == r1)
        assert (event["delivery_id"], event["kind"], event["status"], event["remote_mta"]) == (
            body["delivery_id"], "hard", "5.1.1", "mx1.example.jp")
        assert event["metadata"] == body["metadata"]
        assert dict(await suppression(stack, r1)) == {"reason": "hard", "source": "bounce"}
        assert dict(await suppression(stack, r2)) == {
            "reason": "complaint", "source": "complaint"}
        assert await suppression(stack, r0) is None
        assert await ledger_states(stack, body["delivery_id"]) == {"sent": 1, "bounced": 2}
        delivery = await stack.dispatcher.pool.fetchrow(
            "SELECT bounced FROM deliveries WHERE delivery_id = $1", body["delivery_id"])
        assert delivery["bounced"] == 2
        unmatched = await stack.dispatcher.pool.fetchval(
            "SELECT count(*) FROM bounces_unmatched WHERE account_id = $1", stack.account_id)
        assert unmatched == 1

        # The auto-reply stays where it was (the mailbox may be a person's too), read once.
        assert await dovecot.count(user) == 1
        again = await reader.read_once(mailbox)
        assert (again.read, again.removed) == (0, 0)

        # The next delivery to the bounced address leaves it out.
        body_next = request_body(account_id=stack.account_id,
                                 recipients=[{"email": r, "name": "n", "vars": {"plan": "gold"}}
                                             for r in (r0, r1)])
        await stack.dispatcher.publish_request(body_next)
        completed = await stack.completed(body_next["delivery_id"])
        assert completed["sent"] == 1 and completed["suppressed"] == 1
        assert (await row_of(stack, body_next["delivery_id"], r1))["state"] == "suppressed"
        assert [m.rcpt_tos for m in server.messages].count([r1]) == 1


async def test_a_bounce_that_quotes_nothing_finds_its_recipient_by_the_verp_address(
    start_sender: Any, dovecot: Dovecot,
) -> None:
    async with smtp_server() as server:
        stack, user, body, addresses = await sending_with_mailbox(
            start_sender, server, dovecot, "imap", "ssl", 3, bounce_address=VERP_BASE)
        envelopes = {m.rcpt_tos[0]: m.mail_from for m in server.messages}
        assert len(set(envelopes.values())) == 3  # one envelope sender a recipient
        for address, mail_from in envelopes.items():
            local, _, domain = mail_from.partition("@")
            assert local.startswith("bounces+") and domain == "shop.example.com"
            assert address.partition("@")[0] not in local  # opaque

        # An old MTA's bounce to the envelope sender: no report, no copy of the original.
        target = addresses[2]
        bare = (f"From: MAILER-DAEMON@mx.example.org\nTo: {envelopes[target]}\n"
                "Subject: failure notice\n\nI'm afraid I wasn't able to deliver your message "
                f"to the following addresses.\n\n<{target}>:\n"
                "550 5.1.1 mailbox unavailable\n").encode()
        # A forged token (one character changed) names nobody.
        token_at = envelopes[target].index("+") + 1
        forged_from = (envelopes[target][:token_at]
                       + ("a" if envelopes[target][token_at] != "a" else "b")
                       + envelopes[target][token_at + 1:])
        forged = bare.replace(envelopes[target].encode(), forged_from.encode())
        await dovecot.deliver(user, bare, forged)

        done = await poller(stack, dovecot).read_once(
            await watched(stack, dovecot, user, "imap", "ssl"))
        assert (done.read, done.removed) == (2, 2)
        assert (await row_of(stack, body["delivery_id"], target))["state"] == "bounced"
        assert await ledger_states(stack, body["delivery_id"]) == {"sent": 2, "bounced": 1}
        kept = await stack.dispatcher.pool.fetchval(
            "SELECT count(*) FROM bounces_unmatched WHERE account_id = $1 AND recipient = $2",
            stack.account_id, target)
        assert kept == 1  # the forged one: kept as unmatched, never guessed


async def test_policy_bounces_never_suppress_and_warn_the_account_once(
    start_sender: Any, dovecot: Dovecot,
) -> None:
    async with smtp_server() as server:
        stack, user, body, (r0, r1, _) = await sending_with_mailbox(
            start_sender, server, dovecot, "imap", "starttls", 3)
        block = "550 5.7.1 Service unavailable; client host [198.51.100.7] blocked by Spamhaus"
        await dovecot.deliver(user, *(returned(server, r, status="5.7.1", diagnostic=block)
                                      for r in (r0, r1)))
        done = await poller(stack, dovecot).read_once(
            await watched(stack, dovecot, user, "imap", "starttls"))
        assert done.read == 2
        assert (await row_of(stack, body["delivery_id"], r0))["bounce_kind"] == "policy"
        assert await suppression(stack, r0) is None and await suppression(stack, r1) is None
        stack.relay.wake()
        warning = await stack.wait_event(lambda e: e["type"] == "account.warning"
                                         and e["account_id"] == stack.account_id)
        assert (warning["reason"], warning["status"]) == ("policy_bounce", "5.7.1")
        assert block in warning["diagnostic"]
        await stack.wait_event(lambda e: e["type"] == "mail.bounced" and e["recipient"] == r1)
        warnings = [e for e in stack.of_type("account.warning")
                    if e["account_id"] == stack.account_id]
        assert len(warnings) == 1  # two policy bounces, one warning (at most one an hour)


async def test_a_message_whose_removal_was_lost_is_removed_and_not_read_again(
    start_sender: Any, dovecot: Dovecot,
) -> None:
    """The reader's crash between the commit and the removal, by its effect: the message is
    remembered as read, yet still in the mailbox (as after a kill before EXPUNGE or QUIT)."""
    async with smtp_server() as server:
        stack, user, body, (r0, _, _) = await sending_with_mailbox(
            start_sender, server, dovecot, "pop3", "starttls", 3)
        raw = returned(server, r0, status="5.1.1", diagnostic="550 5.1.1 User unknown")
        await dovecot.deliver(user, raw)
        mailbox = await watched(stack, dovecot, user, "pop3", "starttls")
        intake = BounceIntake(stack.dispatcher.pool, Verp([KEY]))
        async with MailboxReader(mailbox.mailbox, dovecot.ssl_context(), 5) as session:
            [uid] = await session.ids()
            await intake.handle(await session.fetch(uid), stack.account_id,
                                source=FromMailbox(mailbox.mailbox.key, uid))
            # ...and the reader dies here: no DELE, no QUIT.
        assert await dovecot.count(user) == 1

        done = await poller(stack, dovecot).read_once(mailbox)
        assert (done.read, done.removed) == (0, 1)
        assert await dovecot.count(user) == 0
        logged = await stack.dispatcher.pool.fetchval(
            "SELECT count(*) FROM bounce_log WHERE email_key = lower($1)", r0)
        assert logged == 1
        assert (await stack.dispatcher.pool.fetchval(
            "SELECT bounced FROM deliveries WHERE delivery_id = $1", body["delivery_id"])) == 1


async def test_a_refused_login_and_a_missing_starttls_are_said_not_skipped(
    dovecot: Dovecot,
) -> None:
    wrong = dovecot.mailbox(dovecot.new_user(), "imap", "starttls", password="not-it")
    with pytest.raises(MailboxError) as refused:
        async with MailboxReader(wrong, dovecot.ssl_context(), 5):
            pass
    assert refused.value.login and "Authentication failed" in refused.value.text

    # A server whose certificate the sender does not trust: refused, never read in clear.
    with pytest.raises(MailboxError) as untrusted:
        async with MailboxReader(dovecot.mailbox(dovecot.new_user(), "pop3", "ssl"),
                                 ssl.create_default_context(), 5):
            pass
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.value.text


async def test_an_imap_account_with_a_full_batch_reads_on_in_the_next_pass(
    start_sender: Any, dovecot: Dovecot,
) -> None:
    async with smtp_server() as server:
        stack, user, body, addresses = await sending_with_mailbox(
            start_sender, server, dovecot, "imap", "starttls", 5)
        await dovecot.deliver(user, *(returned(server, r, status="5.2.2",
                                               diagnostic="552 5.2.2 Mailbox full")
                                      for r in addresses))
        reader = poller(stack, dovecot, batch=2)
        mailbox = await watched(stack, dovecot, user, "imap", "starttls")
        passes = [await reader.read_once(mailbox) for _ in range(3)]
        assert [(p.read, p.left) for p in passes] == [(2, 3), (2, 1), (1, 0)]
        assert await dovecot.count(user) == 0
        assert await ledger_states(stack, body["delivery_id"]) == {"bounced": 5}
        # Soft bounces: counted, not suppressed after one.
        assert all([await suppression(stack, r) is None for r in addresses])



@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_a_message_with_a_long_line_is_read_whole(dovecot: Dovecot, protocol: str) -> None:
    """poplib alone refuses lines over 2,048 bytes: such a bounce would stop its reader."""
    user = dovecot.new_user()
    long_line = "<p>" + "x" * 6000 + "</p>"
    raw = f"From: MAILER-DAEMON@mx.example.org\r\nSubject: failure\r\n\r\n{long_line}\r\n".encode()
    await dovecot.deliver(user, raw)
    async with MailboxReader(dovecot.mailbox(user, protocol, "starttls"),
                             dovecot.ssl_context(), 5) as reader:
        [uid] = await reader.ids()
        assert long_line.encode() in await reader.fetch(uid)


class PoisonedIntake(BounceIntake):
    """The intake, failing on the messages that say POISON (a fault of ours, or of the data,
    that no retry cures)."""

    async def handle(self, raw: bytes, *args: Any, **kwargs: Any) -> Any:
        if b"POISON" in raw:
            raise ValueError("cannot record this one")
        return await super().handle(raw, *args, **kwargs)


async def test_a_message_that_always_fails_is_set_aside_and_the_rest_is_read(
    start_sender: Any, dovecot: Dovecot,
) -> None:
    async with smtp_server() as server:
        stack, user, body, (r0, r1, r2) = await sending_with_mailbox(
            start_sender, server, dovecot, "imap", "starttls", 3)
        poison = returned(server, r0, status="5.1.1", diagnostic="550 5.1.1 POISON")
        await dovecot.deliver(user, poison, *(returned(server, r, status="5.1.1",
                                                       diagnostic="550 5.1.1 x")
                                              for r in (r1, r2)))
        reader = MailboxPoller(
            stack.dispatcher.pool, PoisonedIntake(stack.dispatcher.pool, Verp([KEY])),
            dovecot.ssl_context(), "reader-p", timeout_s=5, lease_ttl_s=30, batch=100)
        mailbox = await watched(stack, dovecot, user, "imap", "starttls")
        passes = [await reader.read_once(mailbox) for _ in range(4)]
        assert [(p.read, p.removed) for p in passes] == [(2, 2), (0, 0), (0, 0), (0, 0)]
        assert await ledger_states(stack, body["delivery_id"]) == {"sent": 1, "bounced": 2}
        aside = await stack.dispatcher.pool.fetchval(
            "SELECT report FROM bounce_messages WHERE mailbox = $1 AND NOT removed",
            mailbox.mailbox.key)
        assert aside == "unreadable"
        assert await dovecot.count(user) == 1  # left for a person


async def test_a_nul_in_a_bounce_is_dropped_not_refused_by_the_database(
    start_sender: Any,
) -> None:
    """PostgreSQL's text refuses a NUL: kept, the bounce could never be recorded. (IMAP
    servers replace one on delivery; a POP3 server or a raw maildir may not.)"""
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server)
        body, (r0, _, _) = await sent(stack, 3)
        raw = returned(server, r0, status="5.1.1", diagnostic="550 5.1.1 no\x00such user")
        handled = await BounceIntake(stack.dispatcher.pool, Verp([KEY])).handle(
            raw, stack.account_id)
        assert handled.bounced == 1
        assert (await row_of(stack, body["delivery_id"], r0))["bounce_diagnostic"] == (
            "550 5.1.1 nosuch user")


async def test_a_cancelled_reader_stops_at_once_and_the_next_one_finishes_the_mailbox(
    start_sender: Any, dovecot: Dovecot,
) -> None:
    async with smtp_server() as server:
        stack, user, body, addresses = await sending_with_mailbox(
            start_sender, server, dovecot, "pop3", "ssl", 60)
        await dovecot.deliver(user, *(returned(server, r, status="5.1.1",
                                               diagnostic="550 5.1.1 User unknown")
                                      for r in addresses))
        mailbox = await watched(stack, dovecot, user, "pop3", "ssl")
        running = asyncio.create_task(poller(stack, dovecot).run(WatchedRef(mailbox)))

        async def some_bounced() -> bool:
            states = await ledger_states(stack, body["delivery_id"])
            return states.get("bounced", 0) >= 5

        await eventually(some_bounced, timeout=20)
        running.cancel()
        async with asyncio.timeout(5):  # never a hang, never a poller that reads on
            with pytest.raises(asyncio.CancelledError):
                await running
        at_cancel = await ledger_states(stack, body["delivery_id"])
        assert at_cancel.get("sent", 0) > 0, "the reader finished before the cancel"
        await asyncio.sleep(0)
        assert await ledger_states(stack, body["delivery_id"]) == at_cancel

        done = await poller(stack, dovecot).read_once(mailbox)
        assert done is not None and done.left == 0
        assert await ledger_states(stack, body["delivery_id"]) == {"bounced": 60}
        assert await dovecot.count(user) == 0
        logged = await stack.dispatcher.pool.fetchval(
            "SELECT count(*) FROM bounce_log WHERE email_key = ANY($1)", addresses)
        assert logged == 60


async def test_a_persons_deleted_mail_is_theirs_to_expunge_and_an_unknown_outcome_bounces(
    start_sender: Any, dovecot: Dovecot,
) -> None:
    async with smtp_server() as server:
        stack, user, body, (_, r1, r2) = await sending_with_mailbox(
            start_sender, server, dovecot, "imap", "starttls", 3)
        await dovecot.deliver(user, bounce_corpus.VACATION)
        await dovecot.mark_deleted(user)  # the person deleted it, not yet expunged
        # r1's outcome was unknown (the line lost after DATA), r2 failed: a bounce proves
        # r1's mail was taken; r2's never was, so its bounce is kept as unmatched.
        await stack.dispatcher.pool.execute(
            "UPDATE delivery_recipients SET state = CASE idx WHEN 1 THEN 'unknown' "
            "ELSE 'failed' END WHERE delivery_id = $1 AND idx IN (1, 2)", body["delivery_id"])
        await dovecot.deliver(user, *(returned(server, r, status="5.1.1",
                                               diagnostic="550 5.1.1 User unknown")
                                      for r in (r1, r2)))
        done = await poller(stack, dovecot).read_once(
            await watched(stack, dovecot, user, "imap", "starttls"))
        assert done.read == 3
        assert await dovecot.count_all(user) == 1  # the person's, still \Deleted, still there
        assert (await row_of(stack, body["delivery_id"], r1))["state"] == "bounced"
        assert (await row_of(stack, body["delivery_id"], r2))["state"] == "failed"
        kept = await stack.dispatcher.pool.fetchval(
            "SELECT detail FROM bounces_unmatched WHERE account_id = $1 AND recipient = $2",
            stack.account_id, r2)
        assert kept.startswith("its recipient is failed")
