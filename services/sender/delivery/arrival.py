"""A job on its arrival, before it waits for a turn: its row read when it would wait anyway,
and acked at once when it needs no turn (cancelled, expired, its delivery paused). A
cancelled newsletter of 20,000 jobs drains in seconds, not in 20,000 pauses."""

from datetime import UTC, datetime
from typing import Any

import structlog

from services.sender import metrics
from services.sender.delivery import events
from services.sender.delivery.ports import SendStore
from services.sender.delivery.recorder import Recorder
from services.sender.store.recipients import NOT_TO_SEND, SETTLED
from shared.messages import SendJob

log = structlog.get_logger(__name__)


def expired(row: Any) -> bool:
    """The recipient's delivery has an `expires_at`, and it has passed."""
    return row["expires_at"] is not None and datetime.now(UTC) >= row["expires_at"]


def done_with(row: Any) -> bool:
    """No row (an unknown job), or one not to be sent by the job in hand: settled, or
    `scheduled` (the job is a stale copy)."""
    return row is None or row["state"] in NOT_TO_SEND


def sendable(row: Any) -> bool:
    """The recipient's row, if any, says the job may be sent now."""
    return not done_with(row) and not expired(row) and row["paused_at"] is None


async def look(db: SendStore, job: SendJob) -> Any | None:
    """The job's row on its arrival; None when it cannot be had (the job's ordinary path
    reads again, and has the fault handling)."""
    try:
        return await db.recipient(job.delivery_id, job.index)
    except Exception:
        log.warning("reading a job's ledger row on its arrival failed; it takes its turn",
                    exc_info=True, delivery_id=job.delivery_id, index=job.index)
        return None


async def needs_no_turn(db: SendStore, recorder: Recorder, job: SendJob, row: Any,
                        queue_account: str) -> bool:
    """True when the job is done with (the caller acks it): its recipient was cancelled, is
    past its delivery's `expires_at` (settled as `expired` here), or its delivery is paused
    (the recipient waits as `scheduled`; the dispatcher publishes its job again on resume; a
    `scheduled` recipient's job is never sent: it is a stale copy)."""
    state = row["state"]
    if state in SETTLED - {"cancelled", "expired"}:
        return False
    if state in ("queued", "deferred", "new"):
        if expired(row):
            await expire(recorder, job, row, queue_account)
        elif row["paused_at"] is None or not await db.hold(job.delivery_id, job.index):
            return False
    return True


async def expire(recorder: Recorder, job: SendJob, row: Any, account_id: str) -> bool:
    """Contract §6: not sent at all, `mail.failed` with reason `expired`, no server asked.
    Returns whether this record settled it (False: another copy did)."""
    text = f"not sent by the delivery's expires_at ({row['expires_at'].isoformat()})"
    recorded = await recorder.record(
        delivery_id=job.delivery_id, index=job.index, state="expired", code=None,
        text=text, message_id=None, touched_server=False, hold=None,
        event=events.expired(job, account_id, metadata=row["metadata"], text=text),
        completed_id=events.completed_id(job.delivery_id))
    if recorded.applied:
        metrics.OUTCOMES.labels(recorder.account_id, "expired").inc()
        log.info("recipient expired; not sent", delivery_id=job.delivery_id, index=job.index)
    return recorded.applied
