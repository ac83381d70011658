"""The sender's reads and writes: stored deliveries, the recipient rows (the ledger), pacing."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.sender.delivery.compose import DeliveryContent

SETTLED = frozenset({"sent", "failed", "unknown", "expired", "cancelled"})
# Not to be sent by the job in hand: settled, or `scheduled` (the job is a stale copy: the
# dispatcher publishes the recipient's job again, when it is due or its delivery resumed).
NOT_TO_SEND = SETTLED | {"scheduled"}


@dataclass(frozen=True)
class Recorded:
    applied: bool  # False: the row was already settled (another copy of the job)
    attempts: int
    lease_kept: bool  # the account's lease is still ours, for the hold asked


async def recipient(db: asyncpg.Pool, delivery_id: str, index: int) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT r.state, r.attempts, r.last_smtp_code, r.last_smtp_message, r.message_id, "
        "d.metadata, d.completed_at, d.sent, d.failed, d.unknown, d.cancelled, d.suppressed, "
        "d.total, "
        "d.expires_at, d.paused_at "
        "FROM delivery_recipients r JOIN deliveries d USING (delivery_id) "
        "WHERE r.delivery_id = $1 AND r.idx = $2",
        delivery_id, index)


async def hold(db: asyncpg.Pool, delivery_id: str, index: int) -> bool:
    """A paused delivery's job taken out of the queue: its recipient waits as `scheduled`
    until the dispatcher fans it out again on resume. The recipient's row is locked first,
    then the delivery's (the order of the outcome record and of a cancel); a resume that
    committed first leaves nothing to hold (False: the job is sent)."""
    async with db.acquire() as connection, connection.transaction():
        state = await connection.fetchval(
            "SELECT state FROM delivery_recipients WHERE delivery_id = $1 AND idx = $2 "
            "FOR UPDATE", delivery_id, index)
        if state not in ("new", "queued", "deferred"):
            return state == "scheduled"
        paused = await connection.fetchval(
            "SELECT paused_at IS NOT NULL FROM deliveries WHERE delivery_id = $1 FOR SHARE",
            delivery_id)
        if not paused:
            return False
        await connection.execute(
            "UPDATE delivery_recipients SET state = 'scheduled', updated_at = now() "
            "WHERE delivery_id = $1 AND idx = $2", delivery_id, index)
        return True


async def content(db: asyncpg.Pool, delivery_id: str,
                  account: Any) -> tuple[DeliveryContent, dict]:
    row = await db.fetchrow(
        "SELECT ref, subject, text_body, html_body, headers, metadata FROM deliveries "
        "WHERE delivery_id = $1", delivery_id)
    if row is None:
        raise LookupError(f"no stored delivery {delivery_id}")
    return DeliveryContent(
        from_address=account["from_address"], from_name=account["from_name"],
        reply_to=account["reply_to"], subject=row["subject"], text=row["text_body"],
        html=row["html_body"], headers=row["headers"], ref=row["ref"],
    ), row["metadata"]


async def record(db: asyncpg.Pool, *, delivery_id: str, index: int, state: str,
                 code: int | None, message: str, message_id: str | None, account_id: str,
                 owner: str, touched_server: bool, hold: timedelta | None = None,
                 event: dict[str, Any] | None = None,
                 completed_id: str | None = None) -> Recorded:
    """The outcome, its event (and delivery.completed when it completes the delivery) and the
    account's pacing in one transaction; `hold` keeps the lease that long, None gives it back.
    """
    row = await db.fetchrow(
        "SELECT * FROM record_outcome($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        delivery_id, index, state, code, message[:2000], message_id, account_id, owner,
        touched_server, hold, event, completed_id)
    return Recorded(**dict(row))


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


# -- pacing -----------------------------------------------------------------------------------


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


async def ensure_runtime(db: asyncpg.Pool, account_id: str) -> None:
    await db.execute(
        "INSERT INTO account_runtime (account_id) VALUES ($1) ON CONFLICT DO NOTHING", account_id)


async def set_interval(db: asyncpg.Pool, account_id: str, interval_ms: int | None) -> None:
    await db.execute("UPDATE account_runtime SET interval_ms = $2 WHERE account_id = $1",
                     account_id, interval_ms)


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


# -- bounces ----------------------------------------------------------------------------------


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


async def add_event(db: asyncpg.Connection, event: dict[str, Any]) -> None:
    """Into the outbox, in the caller's transaction: the event exists if and only if it
    commits."""
    await db.execute(
        "INSERT INTO sender_outbox (routing_key, event_id, body) VALUES ($1, $2, $3)",
        event["type"], event["event_id"], event)


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
