"""The accounts as the sender reads them, and its own state of each (`account_runtime`): its
pause and the pace a throttling provider left."""

from datetime import datetime
from typing import Any

import asyncpg

from services.sender.store.outbox import add_event


async def account(db: asyncpg.Pool, account_id: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT a.*, r.paused_reason, r.interval_ms AS throttled_interval_ms "
        "FROM accounts a LEFT JOIN account_runtime r ON r.account_id = a.id "
        "WHERE a.id = $1", account_id)


async def live_accounts(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT a.id, a.paused, a.updated_at, a.standby_account_ids, r.paused_reason, "
        "r.resumes_at FROM accounts a "
        "LEFT JOIN account_runtime r ON r.account_id = a.id WHERE a.deleted_at IS NULL")


async def ensure_runtime(db: asyncpg.Pool, account_id: str) -> None:
    await db.execute(
        "INSERT INTO account_runtime (account_id) VALUES ($1) ON CONFLICT DO NOTHING", account_id)


async def set_interval(db: asyncpg.Pool, account_id: str, interval_ms: int | None,
                       event: dict[str, Any] | None = None) -> None:
    """The pace a throttling provider left (None: the configured one), with its
    `account.throttled` when there is one, in one transaction."""
    update = "UPDATE account_runtime SET interval_ms = $2 WHERE account_id = $1"
    if event is None:  # one round trip, as a decay step after each success needs
        await db.execute(update, account_id, interval_ms)
        return
    async with db.acquire() as connection, connection.transaction():
        await connection.execute(update, account_id, interval_ms)
        await add_event(connection, event)


async def set_paused(db: asyncpg.Pool, account_id: str, reason: str | None,
                     detail: str | None, event: dict[str, Any] | None = None,
                     resumes_at: datetime | None = None) -> bool:
    """The sender's own pause (None: its end), and the account's `paused` flag that operators
    see and resume through config_svc (its resume announces `account.resumed`, which the
    sender follows). `event` goes into the outbox in the same transaction, only when the
    state changed: two replicas ending one pause announce it once. Returns whether it did."""
    async with db.acquire() as connection, connection.transaction():
        changed = bool(await connection.fetchval(
            "UPDATE account_runtime SET paused_reason = $2, paused_detail = $3, "
            "paused_at = CASE WHEN $2::text IS NULL THEN NULL ELSE now() END, "
            "resumes_at = $4 "
            "WHERE account_id = $1 AND (paused_reason IS DISTINCT FROM $2 "
            "OR resumes_at IS DISTINCT FROM $4) RETURNING true",
            account_id, reason, detail, resumes_at))
        # An operator's pause outlives the sender's: only an operator's resume ends it.
        await connection.execute(
            "UPDATE accounts SET paused = CASE WHEN paused_by = 'operator' THEN true ELSE $2 END, "
            "paused_by = CASE WHEN paused_by = 'operator' THEN 'operator' "
            "WHEN $2 THEN 'sender' END WHERE id = $1", account_id, reason is not None)
        if changed and event is not None:
            await add_event(connection, event)
    return changed
