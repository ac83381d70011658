"""What the bounce reader reads and writes: the sent recipients a report names, its bounces,
the mailboxes' messages already read and their leases."""

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg

_BOUNCED_ROW = (
    "SELECT r.delivery_id, r.idx, r.email, r.state, r.message_id, "
    "coalesce(r.account_id, d.account_id) AS account_id, d.metadata "
    "FROM delivery_recipients r JOIN deliveries d USING (delivery_id) ")


# Only the mail of the accounts whose mailbox it is (None: any account's).
_OF_ACCOUNTS = " AND ($2::uuid[] IS NULL OR coalesce(r.account_id, d.account_id) = ANY($2))"


async def sent_by_message_id(db: asyncpg.Connection, message_id: str,
                             accounts: Sequence[str] | None) -> asyncpg.Record | None:
    """The recipient a mail was sent to, by its Message-ID (one a recipient)."""
    return await db.fetchrow(_BOUNCED_ROW + "WHERE r.message_id = $1" + _OF_ACCOUNTS,
                             message_id, accounts)


async def sent_by_ref(db: asyncpg.Connection, ref: int, index: int,
                      accounts: Sequence[str] | None) -> asyncpg.Record | None:
    """The recipient a VERP envelope sender names (verp.py)."""
    return await db.fetchrow(
        _BOUNCED_ROW + "WHERE d.ref = $3 AND r.idx = $1" + _OF_ACCOUNTS, index, accounts, ref)


async def record_bounce(db: asyncpg.Connection, *, delivery_id: str, index: int, kind: str,
                        status: str | None, diagnostic: str, event: dict[str, Any],
                        soft_limit: int, soft_window: timedelta) -> tuple[bool, bool]:
    """(applied: the row was sent and is bounced now, suppressed: the address now is)."""
    row = await db.fetchrow(
        "SELECT * FROM record_bounce($1, $2, $3, $4, $5, $6, $7, $8)",
        delivery_id, index, kind, status, diagnostic[:2000], event, soft_limit, soft_window)
    return row["applied"], row["suppressed"]


async def record_unmatched(db: asyncpg.Connection, *, account_id: str | None, report: str,
                           message_id: str | None, recipient: str | None,
                           detail: str) -> None:
    await db.execute(
        "INSERT INTO bounces_unmatched (account_id, report, message_id, recipient, detail) "
        "VALUES ($1, $2, $3, $4, $5)", account_id, report, message_id, recipient,
        detail[:2000])


async def remember_message(db: asyncpg.Connection, mailbox: str, uid: str, report: str,
                           removed: bool) -> bool:
    """False when the message was read already (its effect committed before)."""
    return bool(await db.fetchval(
        "INSERT INTO bounce_messages (mailbox, uid, report, removed) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT DO NOTHING RETURNING true", mailbox, uid, report, removed))


async def messages_read(db: asyncpg.Pool, mailbox: str, uids: list[str]) -> dict[str, bool]:
    """Of `uids`, those read before: uid -> whether it is to be removed."""
    rows = await db.fetch(
        "SELECT uid, removed FROM bounce_messages WHERE mailbox = $1 AND uid = ANY($2)",
        mailbox, uids)
    return {row["uid"]: row["removed"] for row in rows}


async def forget_messages_gone(db: asyncpg.Pool, mailbox: str, uids: list[str]) -> None:
    """What the mailbox no longer holds is forgotten a day after it was read."""
    await db.execute(
        "DELETE FROM bounce_messages WHERE mailbox = $1 AND NOT (uid = ANY($2)) "
        "AND handled_at < now() - interval '1 day'", mailbox, uids)


async def policy_warning_due(db: asyncpg.Connection, account_id: str) -> bool:
    """True at most once an hour per account (the caller then writes account.warning)."""
    return bool(await db.fetchval(
        "INSERT INTO bounce_policy_warnings (account_id, warned_at) VALUES ($1, now()) "
        "ON CONFLICT (account_id) DO UPDATE SET warned_at = now() "
        "WHERE bounce_policy_warnings.warned_at < now() - interval '1 hour' RETURNING true",
        account_id))


async def bounce_accounts(db: asyncpg.Pool) -> list[asyncpg.Record]:
    """Live accounts with a bounce mailbox."""
    return await db.fetch(
        "SELECT * FROM accounts WHERE deleted_at IS NULL AND bounce_protocol IS NOT NULL "
        "AND bounce_password_enc IS NOT NULL ORDER BY created_at, id")


async def take_mailbox(db: asyncpg.Pool, mailbox: str, owner: str, ttl_s: float) -> bool:
    """The mailbox's lease: taken when free, expired or already this reader's (extended)."""
    return bool(await db.fetchval(
        "INSERT INTO bounce_mailbox_leases (mailbox, owner, lease_until) "
        "VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) "
        "ON CONFLICT (mailbox) DO UPDATE SET owner = $2, "
        "lease_until = clock_timestamp() + make_interval(secs => $3) "
        "WHERE bounce_mailbox_leases.owner = $2 "
        "OR bounce_mailbox_leases.lease_until < clock_timestamp() RETURNING true",
        mailbox, owner, ttl_s))


async def release_mailbox(db: asyncpg.Pool, mailbox: str, owner: str) -> None:
    await db.execute("DELETE FROM bounce_mailbox_leases WHERE mailbox = $1 AND owner = $2",
                     mailbox, owner)
