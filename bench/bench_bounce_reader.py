"""Bounces read per second by the sender's mailbox reader, end to end: N delivery status
notifications (as Postfix writes them, each quoting the Message-ID of a sent mail in the
ledger) in a mailbox of the stack's Dovecot, read over IMAP (STARTTLS) and over POP3
(implicit TLS): fetched, parsed, matched, recorded in their transaction, removed.

Beside it, in the same run and on the same bytes: the same mailbox fetched alone (the
protocol's floor: no parsing, no database), and the parse alone (no server, no database).
Needs the stack (`make bench`, or `deploy/local/stack.py up` and its env).

    python bench/bench_bounce_reader.py [N]
"""

import asyncio
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.sender.bounces.dsn import parse
from services.sender.bounces.intake import BounceIntake
from services.sender.bounces.mailbox import MailboxReader
from services.sender.bounces.reader import MailboxPoller, Watched
from services.sender.bounces.verp import Verp
from services.sender.main import MIGRATIONS as SENDER_MIGRATIONS
from shared.db import create_pool, migrate
from shared.logging import configure_logging
from tests.conftest import required_env
from tests.integration.dispatcher_fixtures import insert_account, migrate_all
from tests.support.dovecot import Dovecot
from tests.unit import bounce_corpus

KEY = "bench-key"


def bounces(delivery_id: str, count: int) -> tuple[list[str], list[bytes]]:
    ids = [f"<{delivery_id}.{i}@shop.example.com>" for i in range(count)]
    raws = []
    for index, message_id in enumerate(ids):
        recipient = f"u{index}@example.jp"
        raw = bounce_corpus.dsn(
            reporting="mx.example.jp", recipient=recipient, action="failed", status="5.1.1",
            diagnostic=f"smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: "
                       "User unknown", remote="mx1.example.jp", human="could not be delivered")
        raws.append(raw.replace(bounce_corpus.ORIGINAL_ID.encode(), message_id.encode()))
    return ids, raws


async def ledger_of(pool, account_id: str, message_ids: list[str]) -> str:  # type: ignore[no-untyped-def]
    """A delivery whose every recipient was sent, with these Message-IDs."""
    delivery_id = f"bench-{uuid.uuid4().hex[:10]}"
    await pool.execute(
        "INSERT INTO deliveries (delivery_id, request_sha256, account_id, subject, text_body, "
        "total, sent) VALUES ($1, '\\x00', $2, 's', 't', $3, $3)",
        delivery_id, account_id, len(message_ids))
    await pool.executemany(
        "INSERT INTO delivery_recipients (delivery_id, idx, email, state, message_id) "
        "VALUES ($1, $2, $3, 'sent', $4)",
        [(delivery_id, i, f"u{i}@example.jp", m) for i, m in enumerate(message_ids)])
    return delivery_id


async def fetch_only(dovecot: Dovecot, user: str, protocol: str, tls: str) -> float:
    started = time.perf_counter()
    async with MailboxReader(dovecot.mailbox(user, protocol, tls), dovecot.ssl_context(),
                             30) as reader:
        ids = await reader.ids()
        for uid in ids:
            await reader.fetch(uid)
    return len(ids) / (time.perf_counter() - started)


async def reader_rate(pool, dovecot: Dovecot, account_id: str, user: str,  # type: ignore[no-untyped-def]
                      protocol: str, tls: str, count: int) -> float:
    poller = MailboxPoller(pool, BounceIntake(pool, Verp([KEY]), soft_limit=3,
                                              soft_window=timedelta(days=30)),
                           dovecot.ssl_context(), "bench", timeout_s=30, lease_ttl_s=60,
                           batch=count)
    watched = Watched(dovecot.mailbox(user, protocol, tls), account_id, (), 300)
    started = time.perf_counter()
    done = await poller.read_once(watched)
    elapsed = time.perf_counter() - started
    assert done is not None and done.read == count and done.removed == count, done
    return count / elapsed


async def main(count: int) -> None:
    configure_logging("warning", "console")  # as a service at its usual level: no line a bounce
    dovecot = Dovecot.from_env()
    pool = await create_pool(required_env("MAIL_POSTGRES_DSN"), max_size=4)
    try:
        await migrate_all(pool)
        async with pool.acquire() as db:
            await migrate(db, "sender", SENDER_MIGRATIONS)
        account_id = await insert_account(pool)
        _, sample = bounces("parse", count)
        started = time.perf_counter()
        for raw in sample:
            parse(raw)
        parse_rate = count / (time.perf_counter() - started)

        print(f"{count} bounces (Postfix DSNs, 5.1.1), each matching a sent recipient")
        for protocol, tls in (("imap", "starttls"), ("pop3", "ssl")):
            # Each run its own Message-IDs: a recipient bounces once.
            message_ids, raws = bounces(f"b{uuid.uuid4().hex[:8]}", count)
            await ledger_of(pool, account_id, message_ids)
            fetch_user, reader_user = dovecot.new_user(), dovecot.new_user()
            await dovecot.deliver(fetch_user, *raws)
            await dovecot.deliver(reader_user, *raws)
            fetched = await fetch_only(dovecot, fetch_user, protocol, tls)
            rate = await reader_rate(pool, dovecot, account_id, reader_user, protocol, tls,
                                     count)
            bounced = await pool.fetchval(
                "SELECT count(*) FROM delivery_recipients WHERE message_id = ANY($1) "
                "AND state = 'bounced'", message_ids)
            print(f"{protocol} ({tls}): the reader, end to end: {rate:,.0f} bounces/s "
                  f"({bounced} of {count} recorded); baseline, fetching alone: "
                  f"{fetched:,.0f} messages/s (the reader: {rate / fetched:.0%} of it)")
        print(f"baseline, the parse alone (dsn.py, no server, no database): "
              f"{parse_rate:,.0f} messages/s")
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
