"""Outcomes into the ledger and the outbox, retried in place until the database takes them.

Once the server has answered, the outcome is known and must not be lost: a job put back to its
queue after a 250 would be sent again. So a failing write is retried here, with a backoff
doubling to a cap, the job kept in hand (prefetch 1: the account takes no other meanwhile),
until it commits. Only a crash of the process leaves this window open.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from services.sender import metrics
from services.sender.delivery.ports import SendStore
from services.sender.store.recipients import Recorded

log = structlog.get_logger(__name__)
T = TypeVar("T")

FIRST_RETRY_S = 0.05
MAX_RETRY_S = 5.0


class DatabaseHealth:
    """Whether the sender's last write reached the database (readiness)."""

    def __init__(self) -> None:
        self.healthy = True

    def ok(self) -> None:
        self.healthy = True

    def failed(self) -> None:
        self.healthy = False


async def persist(work: Callable[[], Awaitable[T]], what: str, health: DatabaseHealth) -> T:
    """`work()` until it succeeds; only a cancel (the process ending) stops it."""
    delay = FIRST_RETRY_S
    while True:
        try:
            result = await work()
        except Exception as error:
            health.failed()
            metrics.RECORD_RETRIES.inc()
            log.warning(f"{what} failed; retrying", error=f"{type(error).__name__}: {error}",
                        retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)
            continue
        health.ok()
        return result


class Recorder:
    """One account's writes that follow a send, each retried in place until it commits."""

    def __init__(self, db: SendStore, account_id: str, owner: str,
                 health: DatabaseHealth, wake_events: Callable[[], None]) -> None:
        self._db = db
        self._wake_events = wake_events  # the outbox relay's: events were committed
        self.account_id = account_id
        self._owner = owner
        self._health = health

    async def record(self, *, delivery_id: str, index: int, state: str, code: int | None,
                     text: str, message_id: str | None, touched_server: bool,
                     hold: timedelta | None, event: dict[str, Any] | None,
                     completed_id: str) -> Recorded:
        started = time.monotonic()
        recorded = await persist(lambda: self._db.record(
            delivery_id=delivery_id, index=index, state=state, code=code,
            message=text, message_id=message_id, account_id=self.account_id,
            owner=self._owner, touched_server=touched_server, hold=hold, event=event,
            completed_id=completed_id), "recording an outcome", self._health)
        metrics.RECORD_SECONDS.observe(time.monotonic() - started)
        if recorded.applied:
            self._wake_events()
        return recorded

    async def mark_end(self) -> None:
        await persist(lambda: self._db.mark_end(self.account_id),
                      "recording the end of a transaction", self._health)

    async def release_lease(self, touched_server: bool) -> None:
        await persist(lambda: self._db.release_lease(self.account_id, self._owner,
                                                     touched_server),
                      "giving the lease back", self._health)

    async def set_paused(self, reason: str | None, detail: str | None,
                         event: dict[str, Any] | None,
                         resumes_at: datetime | None = None) -> bool:
        changed = await persist(
            lambda: self._db.set_paused(self.account_id, reason, detail, event, resumes_at),
            "recording the account's pause", self._health)
        self._wake_events()
        return changed
