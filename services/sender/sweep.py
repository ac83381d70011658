"""Recipients whose job can no longer exist, settled with their events.

An account deleted with jobs still waiting (a forced delete moves its queue to `mail.dead`;
a retry coming back finds no queue and goes to `mail.dead`; a request that was being fanned
out is never finished) leaves recipients `new`, `queued` or `deferred` that nothing will
ever send. Every few minutes one sender (a transaction-level advisory lock: it holds
behind a pooler too) settles them as `failed`, each with its `mail.failed`, and
`delivery.completed` when that completes the delivery, through the same outcome record as a
send. A grace after the delete lets a send in hand finish first.
"""

import asyncio
from collections.abc import Callable
from datetime import timedelta

import asyncpg
import structlog

from services.sender import metrics, store
from shared.messages import MailFailed, stable_event_id

log = structlog.get_logger(__name__)

REASON = "the account was deleted before this recipient was sent"
OWNER = "sweep"  # never a lease's owner: the record touches no lease


async def sweep_once(pool: asyncpg.Pool, grace: timedelta, limit: int = 500) -> int:
    """Settles up to `limit` orphans; returns how many. 0 when another sender sweeps."""
    async with pool.acquire() as db:
        async with db.transaction():
            if not await store.take_sweep(db):
                return 0
            rows = await store.orphans(db, grace, limit)
        # One record a transaction, as a send's: a delivery's row is never held from one
        # recipient to the next (a cancel locks the recipients first, then the delivery). A
        # second sweeper reading the same orphans meanwhile records nothing twice.
        settled = 0
        for row in rows:
            delivery_id, index = row["delivery_id"], row["idx"]
            job_id = f"{delivery_id}:{index}"
            event = MailFailed(
                event_id=stable_event_id(job_id, "failed"), delivery_id=delivery_id,
                metadata=row["metadata"], account_id=str(row["account_id"]),
                recipient=row["email"], stage="sender", smtp_code=None, smtp_message=REASON,
                permanent=True, attempts=0)
            recorded = await store.record(
                db, delivery_id=delivery_id, index=index, state="failed", code=None,
                message=REASON, message_id=None, account_id=str(row["account_id"]),
                owner=OWNER, touched_server=False, event=event.model_dump(mode="json"),
                completed_id=stable_event_id(delivery_id, "completed"))
            settled += recorded.applied
    if settled:
        metrics.SWEPT.inc(settled)
        log.warning("recipients of deleted accounts settled as failed", recipients=settled)
    return settled


async def sweep_forever(pool: asyncpg.Pool, every_s: float, grace: timedelta,
                        wake_events: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            while await sweep_once(pool, grace) == 500:
                pass
            await store.forget_old_sends(pool)
        except Exception:
            log.exception("sweep failed; it runs again later")
        else:
            wake_events()
