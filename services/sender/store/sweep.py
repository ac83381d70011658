"""The recipients whose job can no longer exist (their account deleted), for the sweep."""

from datetime import timedelta

import asyncpg

SWEEP_LOCK = 0x6D61696C_73776570  # "mailswep": one sweeper at a time across replicas


async def take_sweep(db: asyncpg.Connection) -> bool:
    """The sweep's lock for the caller's transaction: held behind a pooler too."""
    return bool(await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", SWEEP_LOCK))


async def orphans(db: asyncpg.Connection, grace: timedelta,
                  limit: int) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT r.delivery_id, r.idx, r.email, r.attempts, d.account_id, d.metadata "
        "FROM delivery_recipients r JOIN deliveries d USING (delivery_id) "
        "JOIN accounts a ON a.id = d.account_id "
        "WHERE r.state IN ('new', 'scheduled', 'queued', 'deferred') AND a.deleted_at IS NOT NULL "
        "AND a.deleted_at < now() - $1::interval ORDER BY r.delivery_id, r.idx LIMIT $2",
        grace, limit)
