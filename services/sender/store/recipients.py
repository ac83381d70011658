"""The recipient rows (the ledger) and their stored deliveries, as the send path reads and
writes them."""

from dataclasses import dataclass
from datetime import timedelta
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
