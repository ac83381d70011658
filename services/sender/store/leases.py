"""One account's send lease and quotas: who may send for it now, and when."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Quotas:
    """At most this many accepted messages per rolling minute, hour, day (None: no limit)."""
    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None

    @classmethod
    def of(cls, account: Any) -> "Quotas":
        return cls(account["quota_per_minute"], account["quota_per_hour"],
                   account["quota_per_day"])

    def __bool__(self) -> bool:
        return any((self.per_minute, self.per_hour, self.per_day))

    def limit(self, window: str) -> int | None:
        return {"minute": self.per_minute, "hour": self.per_hour, "day": self.per_day}[window]


@dataclass(frozen=True)
class QuotaFull:
    """A window is full: no lease taken; the account may send again at `resumes_at`."""
    window: str
    resumes_at: datetime


_TAKE_WITH_QUOTAS = """
WITH windows (name, span, n) AS (
    VALUES ('minute', interval '1 minute', $5::int), ('hour', interval '1 hour', $6::int),
           ('day', interval '1 day', $7::int)
), full_windows AS (
    -- Full when it holds n sends: it frees when the n-th most recent leaves it.
    SELECT w.name, (SELECT s.at FROM account_sends s
                    WHERE s.account_id = $1 AND s.at > clock_timestamp() - w.span
                    ORDER BY s.at DESC OFFSET w.n - 1 LIMIT 1) + w.span AS frees
    FROM windows w WHERE w.n IS NOT NULL
), blocked AS (
    SELECT name, frees FROM full_windows WHERE frees IS NOT NULL ORDER BY frees DESC LIMIT 1
), taken AS (
    UPDATE account_runtime SET lease_owner = $2, lease_until = greatest(clock_timestamp(),
        coalesce(last_end + make_interval(secs => $3 / 1000.0), clock_timestamp()))
        + make_interval(secs => $4)
    WHERE account_id = $1 AND (lease_owner IS NULL OR lease_owner = $2
        OR lease_until < clock_timestamp()) AND NOT EXISTS (SELECT 1 FROM blocked)
    RETURNING coalesce(greatest(0, extract(epoch FROM last_end
        + make_interval(secs => $3 / 1000.0) - clock_timestamp())), 0)::float8 AS wait
)
SELECT (SELECT wait FROM taken) AS wait, (SELECT name FROM blocked) AS window,
       (SELECT frees FROM blocked) AS resumes_at
"""


async def take_turn(db: asyncpg.Pool, account_id: str, owner: str, interval_ms: int,
                    ttl_s: float, quotas: Quotas) -> float | QuotaFull | None:
    """`take_lease`, and in the same statement the account's quotas: a full window gives no
    lease but when it frees (so two replicas cannot both take the last slot: the lease's
    holder is the only one sending, and its sends are counted at their record)."""
    if not quotas:
        return await take_lease(db, account_id, owner, interval_ms, ttl_s)
    row = await db.fetchrow(_TAKE_WITH_QUOTAS, account_id, owner, interval_ms, ttl_s,
                            quotas.per_minute, quotas.per_hour, quotas.per_day)
    if row["window"] is not None:
        return QuotaFull(row["window"], row["resumes_at"])
    return row["wait"]


async def forget_old_sends(db: asyncpg.Pool) -> int:
    """Sends older than the longest window count for nothing any more."""
    result = await db.execute(
        "DELETE FROM account_sends WHERE at < clock_timestamp() - interval '1 day 1 minute'")
    return int(result.split()[-1])


async def take_lease(db: asyncpg.Pool, account_id: str, owner: str, interval_ms: int,
                     ttl_s: float) -> float | None:
    """Takes the account's send lease; returns the seconds to wait before sending, or None
    when another sender holds it. The wait is computed on the database's clock, the one that
    recorded the last send's end, so replicas on other machines agree."""
    return await db.fetchval(
        "UPDATE account_runtime SET lease_owner = $2, lease_until = greatest(clock_timestamp(), "
        "  coalesce(last_end + make_interval(secs => $3 / 1000.0), clock_timestamp())) "
        "  + make_interval(secs => $4) "
        "WHERE account_id = $1 AND (lease_owner IS NULL OR lease_owner = $2 "
        "  OR lease_until < clock_timestamp()) "
        "RETURNING coalesce(greatest(0, extract(epoch FROM last_end "
        "  + make_interval(secs => $3 / 1000.0) - clock_timestamp())), 0)::float8",
        account_id, owner, interval_ms, ttl_s)


async def extend_lease(db: asyncpg.Pool, account_id: str, owner: str, ttl_s: float) -> bool:
    """Keeps the lease ours for `ttl_s` more (a send outlasting the hold); False: not ours."""
    return bool(await db.fetchval(
        "UPDATE account_runtime SET lease_until = clock_timestamp() + make_interval(secs => $3) "
        "WHERE account_id = $1 AND lease_owner = $2 RETURNING true", account_id, owner, ttl_s))


async def lease_left_s(db: asyncpg.Pool, account_id: str) -> float:
    value = await db.fetchval(
        "SELECT greatest(0, extract(epoch FROM lease_until - clock_timestamp()))::float8 "
        "FROM account_runtime WHERE account_id = $1", account_id)
    return value or 0.0


async def release_lease(db: asyncpg.Pool, account_id: str, owner: str,
                        touched_server: bool) -> None:
    """Gives the lease back without an outcome (a fault of the account); a server contacted
    counts as a send for pacing."""
    await db.execute(
        "UPDATE account_runtime SET lease_owner = NULL, lease_until = NULL, "
        "last_end = CASE WHEN $3 THEN greatest(last_end, clock_timestamp()) ELSE last_end END "
        "WHERE account_id = $1 AND lease_owner = $2", account_id, owner, touched_server)


async def mark_end(db: asyncpg.Pool, account_id: str) -> None:
    """An SMTP transaction that reached the server ended now and records no outcome (withdrawn,
    a copy of a job already done): it counts for pacing, whoever holds the lease."""
    await db.execute(
        "UPDATE account_runtime SET last_end = greatest(last_end, clock_timestamp()) "
        "WHERE account_id = $1", account_id)


class AccountLease:
    """One account's lease and quotas, as the pacer uses them (a fake stands in for it in
    unit tests)."""

    def __init__(self, db: asyncpg.Pool, account_id: str) -> None:
        self._db = db
        self._account_id = account_id
        self.quotas = Quotas()

    async def take(self, owner: str, interval_ms: int,
                   ttl_s: float) -> float | QuotaFull | None:
        return await take_turn(self._db, self._account_id, owner, interval_ms, ttl_s,
                               self.quotas)

    async def extend(self, owner: str, ttl_s: float) -> bool:
        return await extend_lease(self._db, self._account_id, owner, ttl_s)

    async def left_s(self) -> float:
        return await lease_left_s(self._db, self._account_id)

    async def release(self, owner: str, touched_server: bool) -> None:
        await release_lease(self._db, self._account_id, owner, touched_server)
