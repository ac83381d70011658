"""Scheduled deliveries (`send_at`) fanned out at their time, and resumed ones at once, from
the database.

A delivery with a `send_at` in the future is stored and accepted at once, its recipients
`scheduled`; nothing of it is in the broker. One dispatcher at a time owns the schedule: a
transaction-level advisory lock in a transaction left open on a connection of its own,
outside the pool, so that it never takes one from the requests. No session state, so a
pooler in transaction mode keeps the transaction's server connection for it. When that
dispatcher dies, its connection goes, the transaction and the lock with it, and another one
takes over within a poll. The owner fans out what is due with the fan-out of every
delivery, under the delivery's own lock, so a request redelivered at the same moment cannot
publish it twice. A restart loses nothing: what is due is read from the table. The owner
also publishes the events of a cancel that was committed but never announced (cancel.py).
A delivery that cannot be fanned out now is tried again after a backoff, never holding up
the others.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from services.dispatcher import repository
from services.dispatcher.cancel import Canceller
from services.dispatcher.fanout import FanOut, Unroutable
from services.dispatcher.locks import DeliveryLocks

log = structlog.get_logger(__name__)

SCHEDULE_LOCK = 0x6D61696C_73636864  # "mailschd"
BATCH = 100
RETRY_S = (5.0, 300.0)  # a delivery that could not be fanned out: first and longest backoff


class Schedule:
    def __init__(self, pool: asyncpg.Pool, locks: DeliveryLocks,
                 connect: Callable[[], Awaitable[asyncpg.Connection]],
                 fanout: FanOut, canceller: Canceller, poll_s: float,
                 announce_after_s: float = 10.0) -> None:
        self._pool = pool
        self._locks = locks
        self._connect = connect  # the lock holder's own connection
        self._fanout = fanout
        self._canceller = canceller
        self._announce_after_s = announce_after_s  # a cancel in progress announces itself
        self._poll_s = poll_s
        self._backoff: dict[str, tuple[float, float]] = {}  # id -> (not before, last delay)
        self.owner = False
        self.tries = 0  # at the schedule's lock
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Something is due now (a resumed delivery): no need to wait for the poll."""
        self._wake.set()

    def stop(self) -> None:
        """Ends `run` at its next wait. A flag, not a cancel: a cancelled broker command
        makes aiormq close its channel, and a broker that has not opened that channel yet
        closes the whole connection (every other channel on it) for that."""
        self._stopping = True
        self._wake.set()

    async def stopped(self, task: "asyncio.Task[None]", grace_s: float) -> None:
        """Stops the `run` in `task`, cancelling it when it has not ended after `grace_s`."""
        self.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Until stopped: waits to own the schedule, then fans out what comes due."""
        while not self._stopping:
            try:
                holder = await self._connect()
                try:
                    await holder.execute("BEGIN")
                    got = await holder.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                                SCHEDULE_LOCK)
                    self.tries += 1
                    if got:
                        self.owner = True
                        log.info("this dispatcher owns the schedule")
                        await self._own(holder)
                finally:
                    self.owner = False
                    holder.terminate()  # the lock goes with the connection's transaction
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the schedule failed; it starts again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)

    async def _own(self, holder: asyncpg.Connection) -> None:
        while not self._stopping:
            # The lock lives as long as this transaction: a lost one ends the ownership.
            await holder.fetchval("SELECT 1")
            self._wake.clear()
            while await self.fan_out_due() == BATCH:
                pass
            try:
                await self._canceller.announce_pending(self._announce_after_s)
            except Exception:
                log.exception("announcing a cancel failed; tried again at the next poll")
            wait_s = await repository.next_due_in_s(self._pool)
            # Due already (one that could not be fanned out, or just come): the next poll.
            sleep_s = self._poll_s if wait_s is None or wait_s <= 0 else min(self._poll_s,
                                                                            wait_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), sleep_s)

    async def fan_out_due(self) -> int:
        """Fans out up to a batch of due deliveries; returns how many were fanned out."""
        now = time.monotonic()
        waiting = [key for key, (at, _) in self._backoff.items() if at > now]
        done = 0
        for delivery_id in await repository.due(self._pool, BATCH, waiting):
            try:
                fanned = await self._fan_out(delivery_id)
            except Exception:
                log.exception("fanning out a scheduled delivery failed; tried again later",
                              delivery_id=delivery_id)
                fanned = False
            if fanned:
                self._backoff.pop(delivery_id, None)
                done += 1
            else:
                last = self._backoff.get(delivery_id, (0.0, RETRY_S[0] / 2))[1]
                delay = min(last * 2, RETRY_S[1])
                self._backoff[delivery_id] = (time.monotonic() + delay, delay)
        return done

    async def _fan_out(self, delivery_id: str) -> bool:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(delivery_id=delivery_id)
        async with self._locks.hold(delivery_id) as db:
            row = await repository.get_delivery(db, delivery_id)
            if row is None or any(row[name] is not None for name in (
                    "fanned_out_at", "cancelled_at", "paused_at")):
                return True  # nothing left to do for it
            account_id, urgent = str(row["account_id"]), row["priority"] == "high"
            try:
                await self._fanout.require_queue(account_id, urgent)
            except Unroutable:
                if await repository.account_deleted(db, account_id):
                    # Nothing may send it: the sender's sweep settles its recipients as
                    # failed, with their events.
                    await repository.mark_fanned_out(db, delivery_id)
                    log.warning("scheduled delivery's account was deleted; not sent")
                else:
                    log.error("scheduled delivery's account has no queue; tried again later")
                return False
            published = await self._fanout.publish(db, delivery_id, account_id, urgent)
            await repository.mark_fanned_out(db, delivery_id)
        log.info("scheduled delivery fanned out", published=published)
        return True
