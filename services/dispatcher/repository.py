"""Deliveries and their recipient rows, over asyncpg. The `accounts` table is read only."""

from collections.abc import Sequence
from typing import Any, Literal, get_args

import asyncpg

from services.dispatcher.validate import PreparedDelivery, account_uuid

RECIPIENT_STATES = ("new", "scheduled", "queued", "deferred", "sent", "failed", "unknown",
                    "cancelled", "expired", "suppressed", "bounced")
# A cancel settles these: every recipient whose job is not yet sent (or settled otherwise).
CANCELLABLE = ["new", "scheduled", "queued", "deferred"]


async def find_account(db: asyncpg.Connection, account_id: str | None) -> asyncpg.Record | None:
    """The named live account, or the default one when none is named."""
    if account_id is None:
        return await db.fetchrow(
            "SELECT id, personal, owner FROM accounts WHERE is_default AND deleted_at IS NULL")
    wanted = account_uuid(account_id)
    if wanted is None:
        return None
    return await db.fetchrow(
        "SELECT id, personal, owner FROM accounts WHERE id = $1 AND deleted_at IS NULL", wanted)


async def get_delivery(db: asyncpg.Connection | asyncpg.Pool,
                       delivery_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM deliveries WHERE delivery_id = $1", delivery_id)


async def store(db: asyncpg.Connection, prepared: PreparedDelivery, sha256: bytes,
                scheduled: bool, suppressed: set[str]) -> int:
    """The delivery and one row per recipient, in one transaction; a scheduled delivery's
    recipients wait as `scheduled` until its `send_at`; those on the suppression list
    (`suppressed`, lower-case addresses) are `suppressed`. Returns how many those are; a
    delivery whose every recipient is suppressed is complete at once."""
    request = prepared.request
    waiting = "scheduled" if scheduled else "new"
    states = ["suppressed" if r.email.lower() in suppressed else waiting
              for r in prepared.recipients]
    count = states.count("suppressed")
    async with db.transaction():
        await db.execute(
            "INSERT INTO deliveries (delivery_id, request_sha256, account_id, requested_by, "
            "subject, text_body, html_body, headers, metadata, total, priority, send_at, "
            "expires_at, suppressed, completed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
            "$9, $10, $11, $12, $13, $14, CASE WHEN $14::int = $10::int THEN now() END)",
            request.delivery_id, sha256, prepared.account_id, request.requested_by,
            request.subject, request.text, request.html, request.headers, request.metadata,
            len(prepared.recipients), request.priority, request.send_at, request.expires_at,
            count,
        )
        await db.copy_records_to_table(
            "delivery_recipients",
            columns=["delivery_id", "idx", "email", "name", "vars", "state"],
            records=(
                (request.delivery_id, index, r.email, r.name, r.vars, states[index])
                for index, r in enumerate(prepared.recipients)
            ),
        )
    return count


SuppressionReason = Literal["hard", "soft", "complaint", "manual"]
SUPPRESSION_REASONS: tuple[str, ...] = get_args(SuppressionReason)


async def suppressed_among(db: asyncpg.Connection, emails: Sequence[str]) -> set[str]:
    """Of these addresses, the lower-case ones on the suppression list."""
    rows = await db.fetch("SELECT email_key FROM suppressions WHERE email_key = ANY($1)",
                          [email.lower() for email in emails])
    return {row["email_key"] for row in rows}


async def list_suppressions(db: asyncpg.Pool, q: str | None, limit: int,
                            offset: int) -> tuple[list[asyncpg.Record], int]:
    """Newest first; `q` a part of the address."""
    pattern = None if not q else "%" + q.lower().replace("\\", "\\\\").replace(
        "%", "\\%").replace("_", "\\_") + "%"
    where = "($1::text IS NULL OR email_key LIKE $1)"
    total = await db.fetchval(f"SELECT count(*) FROM suppressions WHERE {where}", pattern)
    rows = await db.fetch(
        f"SELECT email, reason, source, detail, created_at FROM suppressions WHERE {where} "
        "ORDER BY created_at DESC, email_key LIMIT $2 OFFSET $3", pattern, limit, offset)
    return rows, total


async def suppress(db: asyncpg.Pool | asyncpg.Connection, email: str, reason: str,
                   source: str, detail: str | None) -> asyncpg.Record:
    """Adds the address (kept as it was when it is there already); returns its row."""
    await db.execute(
        "INSERT INTO suppressions (email_key, email, reason, source, detail) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (email_key) DO NOTHING",
        email.lower(), email, reason, source, detail)
    return await db.fetchrow(
        "SELECT email, reason, source, detail, created_at FROM suppressions "
        "WHERE email_key = $1", email.lower())


async def unsuppress(db: asyncpg.Pool, email: str) -> bool:
    return await db.fetchval(
        "WITH d AS (DELETE FROM suppressions WHERE email_key = $1 RETURNING 1) "
        "SELECT count(*) > 0 FROM d", email.lower())


async def release_scheduled(db: asyncpg.Connection, delivery_id: str) -> None:
    """`scheduled` (waiting for send_at, or taken out of the queue by a pause) becomes `new`
    before any of its jobs is published: the sender never sends a `scheduled` recipient (its
    job is a stale copy), and a job may reach it before its window's `queued` commits."""
    await db.execute(
        "UPDATE delivery_recipients SET state = 'new', updated_at = now() "
        "WHERE delivery_id = $1 AND state = 'scheduled'", delivery_id)


async def not_queued(db: asyncpg.Connection, delivery_id: str, after: int,
                     limit: int) -> list[asyncpg.Record]:
    """Up to `limit` recipients after index `after` whose job the broker has not yet
    confirmed, in order: a window at a time, so that 100,000 rows are never in memory."""
    return await db.fetch(
        "SELECT idx, email, name, vars FROM delivery_recipients "
        "WHERE delivery_id = $1 AND state = 'new' AND idx > $2 ORDER BY idx LIMIT $3",
        delivery_id, after, limit,
    )


async def mark_queued(db: asyncpg.Connection, delivery_id: str, first: int, last: int) -> None:
    """A window of `not_queued`: every recipient still `new` from `first` to `last`.

    A range of the primary key, not `idx = ANY(...)`: for that, once PostgreSQL's plan for
    the prepared statement turned generic, it scanned every recipient of the delivery still
    `new` at each window (0.4 s a window at the start of 100,000 instead of 0.01 s)."""
    await db.execute(
        "UPDATE delivery_recipients SET state = 'queued', queued_at = now(), updated_at = now() "
        "WHERE delivery_id = $1 AND idx BETWEEN $2 AND $3 AND state = 'new'",
        delivery_id, first, last,
    )


async def mark_accepted(db: asyncpg.Connection, delivery_id: str, fanned_out: bool) -> None:
    await db.execute(
        "UPDATE deliveries SET accepted_at = now(), "
        "fanned_out_at = CASE WHEN $2 THEN now() END "
        "WHERE delivery_id = $1 AND accepted_at IS NULL",
        delivery_id, fanned_out,
    )


async def mark_fanned_out(db: asyncpg.Connection, delivery_id: str) -> None:
    await db.execute(
        "UPDATE deliveries SET fanned_out_at = now() WHERE delivery_id = $1 "
        "AND fanned_out_at IS NULL", delivery_id)


# Waiting to be fanned out: scheduled, or resumed after a pause (no send_at: at once).
_WAITING = ("fanned_out_at IS NULL AND accepted_at IS NOT NULL AND cancelled_at IS NULL "
            "AND paused_at IS NULL")


async def due(db: asyncpg.Connection, limit: int, skipped: list[str]) -> list[str]:
    """Deliveries to fan out now: scheduled ones whose time has come, resumed ones; not those
    `skipped` (waiting for another try)."""
    rows = await db.fetch(
        f"SELECT delivery_id FROM deliveries WHERE {_WAITING} "
        "AND coalesce(send_at, '-infinity') <= now() AND delivery_id <> ALL($2::text[]) "
        "ORDER BY send_at NULLS FIRST LIMIT $1", limit, skipped)
    return [row["delivery_id"] for row in rows]


async def next_due_in_s(db: asyncpg.Connection) -> float | None:
    """Seconds until the next delivery is due (None: none waits)."""
    return await db.fetchval(
        "SELECT extract(epoch FROM min(coalesce(send_at, now())) - now())::float8 "
        f"FROM deliveries WHERE {_WAITING}")


async def pause(db: asyncpg.Connection, delivery_id: str) -> asyncpg.Record | None:
    """The delivery stops; None when it was paused already, cancelled or complete."""
    return await db.fetchrow(
        "UPDATE deliveries SET paused_at = now() WHERE delivery_id = $1 AND paused_at IS NULL "
        "AND cancelled_at IS NULL AND completed_at IS NULL RETURNING *", delivery_id)


async def resume(db: asyncpg.Connection, delivery_id: str) -> asyncpg.Record | None:
    """The delivery goes on: what was taken out of the queue is fanned out again by the
    schedule (durably: a resume whose fan-out fails is done by the schedule's next poll).
    None when it was not paused."""
    return await db.fetchrow(
        "UPDATE deliveries SET paused_at = NULL, "
        "fanned_out_at = CASE WHEN accepted_at IS NULL THEN fanned_out_at END "
        "WHERE delivery_id = $1 AND paused_at IS NOT NULL RETURNING *", delivery_id)


async def account_deleted(db: asyncpg.Connection, account_id: str) -> bool:
    return bool(await db.fetchval(
        "SELECT deleted_at IS NOT NULL FROM accounts WHERE id = $1", account_id))


async def cancel(db: asyncpg.Connection, delivery_id: str,
                 requested_by: str | None) -> asyncpg.Record | None:
    """Every recipient not yet sent becomes `cancelled`, once: a second cancel changes
    nothing and returns the first one's counts. The recipient rows are locked first, then the
    delivery's, in the order of the sender's outcome record (no deadlock with it): a 250
    recorded before the cancel counts as sent; one recorded after it (a transaction already
    on the wire) moves from cancelled to sent. The delivery completes here when nothing else
    is left to settle."""
    async with db.transaction():
        row = await db.fetchrow("SELECT cancelled_at FROM deliveries WHERE delivery_id = $1",
                                delivery_id)
        if row is None:
            return None
        if row["cancelled_at"] is None:
            count = await db.fetchval(
                "WITH c AS (UPDATE delivery_recipients SET state = 'cancelled', "
                "updated_at = now() WHERE delivery_id = $1 AND state = ANY($2::text[]) "
                "RETURNING 1) SELECT count(*) FROM c", delivery_id, CANCELLABLE)
            # A cancel at the same moment: the first one's update holds, this one's is empty.
            await db.execute(
                "UPDATE deliveries SET cancelled_at = now(), cancelled_by = $2, "
                "cancelled = cancelled + $3, cancel_count = $3, cancel_sent = sent, "
                "completed_at = CASE WHEN completed_at IS NULL "
                "AND sent + failed + unknown + cancelled + suppressed + $3 = total THEN now() "
                "ELSE completed_at END WHERE delivery_id = $1 AND cancelled_at IS NULL",
                delivery_id, requested_by, count)
        return await db.fetchrow("SELECT * FROM deliveries WHERE delivery_id = $1",
                                 delivery_id)


async def unannounced_cancels(db: asyncpg.Pool, older_than_s: float) -> list[str]:
    """Cancels committed a while ago whose events were not published (a publish that failed,
    a dispatcher that died in between)."""
    rows = await db.fetch(
        "SELECT delivery_id FROM deliveries WHERE cancelled_at IS NOT NULL "
        "AND cancel_announced_at IS NULL AND cancelled_at < now() - $1 * interval '1 second' "
        "LIMIT 100", older_than_s)
    return [row["delivery_id"] for row in rows]


async def mark_cancel_announced(db: asyncpg.Pool, delivery_id: str) -> None:
    await db.execute(
        "UPDATE deliveries SET cancel_announced_at = now() WHERE delivery_id = $1 "
        "AND cancel_announced_at IS NULL", delivery_id)


LIST_STATES = {
    "active": "completed_at IS NULL AND paused_at IS NULL AND fanned_out_at IS NOT NULL",
    "scheduled": "completed_at IS NULL AND fanned_out_at IS NULL AND send_at IS NOT NULL "
                 "AND paused_at IS NULL",
    "paused": "completed_at IS NULL AND paused_at IS NOT NULL",
    "completed": "completed_at IS NOT NULL",
}


async def list_deliveries(db: asyncpg.Pool, *, requested_by: str | None,
                          account_id: str | None, state: str | None, limit: int,
                          offset: int) -> tuple[list[asyncpg.Record], int]:
    """Newest first; `requested_by` None: everyone's (an administrator)."""
    conditions, args = ["true"], []
    if requested_by is not None:
        args.append(requested_by)
        conditions.append(f"requested_by = ${len(args)}")
    if account_id is not None:
        args.append(account_id)
        conditions.append(f"account_id = ${len(args)}::uuid")
    if state is not None:
        conditions.append(LIST_STATES[state])
    where = " AND ".join(conditions)
    total = await db.fetchval(f"SELECT count(*) FROM deliveries WHERE {where}", *args)
    rows = await db.fetch(
        "SELECT delivery_id, account_id, requested_by, subject, total, sent, failed, unknown, "
        "cancelled, priority, send_at, created_at, completed_at, cancelled_at, paused_at, "
        f"fanned_out_at FROM deliveries WHERE {where} ORDER BY created_at DESC, delivery_id "
        f"LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}", *args, limit, offset)
    return rows, total


async def recipient_counts(db: asyncpg.Pool, delivery_id: str) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT state, count(*) AS n FROM delivery_recipients WHERE delivery_id = $1 "
        "GROUP BY state", delivery_id)
    counts = dict.fromkeys(RECIPIENT_STATES, 0)
    counts.update({row["state"]: row["n"] for row in rows})
    return counts


async def recipients(db: asyncpg.Pool, delivery_id: str, state: str | None, limit: int,
                     offset: int) -> list[dict[str, Any]]:
    rows = await db.fetch(
        # account_id: the account that sent or last tried (a standby's, after a fail-over);
        # the sender's migration adds the column, hence read through to_jsonb.
        "SELECT idx, email, name, state, attempts, last_smtp_code, last_smtp_message, "
        "message_id, updated_at, to_jsonb(r) ->> 'account_id' AS account_id "
        "FROM delivery_recipients r "
        "WHERE delivery_id = $1 AND ($2::text IS NULL OR state = $2) ORDER BY idx "
        "LIMIT $3 OFFSET $4",
        delivery_id, state, limit, offset)
    return [dict(row) for row in rows]
