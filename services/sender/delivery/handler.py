"""One job of one account, in named steps: on arrival, prepare, wait for the turn and the
quota, send, then on failure or on success. The handler returns what becomes of the message
(a `Disposition`) and touches no transport object: the edge's `Carrier` carries it out.

A message is acked only after its outcome is in the ledger, its event in the outbox beside it
(one transaction; the relay publishes the events with confirms). A fault that is not the
recipient's (the database or the broker away, an unexpected error) never fails the recipient
and never puts the job back to count against the queue's delivery limit: the job stays in
hand (prefetch 1, so the account takes no other) and is tried again after a backoff.
"""

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from services.sender import metrics
from services.sender.delivery import arrival as on_arrival
from services.sender.delivery.classify import classify
from services.sender.delivery.compose import Composer, envelope_address
from services.sender.delivery.context import Arrival, InTurn, stood_in_for
from services.sender.delivery.disposition import (
    Ack,
    Disposition,
    Requeue,
    ToDead,
    ToQueue,
)
from services.sender.delivery.outcomes import Outcomes
from services.sender.delivery.pacer import QuotaReached
from services.sender.delivery.ports import Carrier, Session
from services.sender.delivery.prepare import Prepared, prepare
from services.sender.delivery.turns import Interrupted
from shared.messages import SendJob
from shared.smtp import SmtpStageError, Withdrawn

log = structlog.get_logger(__name__)

FIRST_JOB_RETRY_S = 0.5
MAX_JOB_RETRY_S = 30.0


class RowCheck:
    """The ledger row, read while MAIL and RCPT are on the wire; DATA waits for it."""

    def __init__(self, db: Any, job: SendJob, session: Session) -> None:
        self._db = db
        self._job = job
        self._session = session
        self._opened = session.connections
        self.task = self._read()

    def _read(self) -> asyncio.Future:
        return asyncio.ensure_future(self._db.recipient(self._job.delivery_id, self._job.index))

    async def still_to_send(self) -> bool:
        if self._session.connections != self._opened:
            # A connection was opened after the read began (the first, or a stale one
            # replaced): a cancel may have committed meanwhile, before this MAIL.
            self.task.cancel()
            self.task = self._read()
        return on_arrival.sendable(await self.task)


class JobHandler:
    def __init__(self, worker: Any, parts: Any) -> None:
        self._w = worker  # the account's state: settings, pacer, turns, session, pause
        self._parts = parts
        self._db = parts.store
        self._clock = parts.clock
        self.outcomes = Outcomes(worker, parts)
        self._stalled = False
        # The last job was withdrawn before DATA (cancelled, expired, held back): its
        # neighbours likely are too, so each job's row is read on arrival until one is sent.
        self._look_first = False

    # -- on arrival -----------------------------------------------------------------------

    async def take(self, arrived: Arrival, carrier: Carrier) -> None:
        gate = self._w.gate
        if gate is not None:
            # Subscribed in a batch: the job waits in hand until the batch is subscribed (a
            # first send per account, thousands at once, would slow the rest of it).
            await gate.wait()
        if await self._skipped(arrived, carrier):
            return
        if not self._w.running:
            await self._give_back(carrier)
            return
        try:
            async with self._w.turns.turn(arrived.urgent), self._w.busy:
                await self._in_turn(arrived, carrier)
        except Interrupted:
            await self._give_back(carrier)

    async def _skipped(self, arrived: Arrival, carrier: Carrier) -> bool:
        """A job that needs no turn, acked at once without waiting for the account's pause.
        Whatever fails here is left to the job's ordinary path, which reads the ledger again
        and has the fault handling."""
        job = arrived.job
        queue_account = arrived.queue_account(self._w.account_id)
        if job is None or job.account_id != queue_account or not self._worth_a_look():
            return False
        row = await on_arrival.look(self._db, job)
        if row is None:
            return False
        try:
            if not await on_arrival.needs_no_turn(self._db, self._w.recorder, job, row,
                                                  queue_account):
                return False
            await carrier.carry_out(Ack())
        except Exception:
            log.warning("skipping a cancelled or expired job failed; it takes its turn",
                        exc_info=True, delivery_id=job.delivery_id, index=job.index)
            return False
        metrics.SKIPPED.labels(self._w.account_id).inc()
        return True

    def _worth_a_look(self) -> bool:
        """Whether a job's row is read on its arrival, to skip it without a wait: when it would
        wait (the account's pause, another job in hand, a lease to take, perhaps after
        another replica's send), or after a withdrawal. A job sent at once needs no such
        read: its row is read anyway while MAIL and RCPT are on the wire (one round trip a
        mail fewer on a busy account)."""
        pacer = self._w.pacer
        return (self._look_first or self._w.busy.locked() or not pacer.holds_lease
                or pacer.ready_at() > self._clock.now())

    @staticmethod
    async def _give_back(carrier: Carrier) -> None:
        # Delivered before our cancel reached the broker: back to the head.
        with contextlib.suppress(Exception):
            await carrier.carry_out(Requeue())

    # -- in its turn ----------------------------------------------------------------------

    async def _in_turn(self, arrived: Arrival, carrier: Carrier) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(account_id=self._w.account_id)
        if (requested := stood_in_for(arrived.home)) is not None:
            structlog.contextvars.bind_contextvars(requested_account_id=requested)
        started = self._clock.now()
        delay = FIRST_JOB_RETRY_S
        disposition: Disposition | None = None
        try:
            while True:
                if disposition is None and not self._w.running:
                    await self._give_back(carrier)
                    return
                try:
                    if disposition is None:
                        disposition = await self.process(arrived, started)
                    # Once decided, only the message's fate is retried, not the send.
                    await carrier.carry_out(disposition)
                    return
                except Exception:
                    if not carrier.alive():
                        log.warning("the job's channel closed: the broker gives the job "
                                    "again (its outcome, if any, is recorded)")
                        return
                    self._stall(True)
                    metrics.JOB_RETRIES.labels(self._w.account_id).inc()
                    log.exception("job failed for a reason not the recipient's; it stays "
                                  "in hand and is tried again", retry_in_s=delay)
                    if disposition is None:
                        await self._w.drop_session()
                    await self._clock.sleep(delay)
                    delay = min(delay * 2, MAX_JOB_RETRY_S)
        finally:
            self._stall(False)

    def _stall(self, stalled: bool) -> None:
        if stalled != self._stalled:
            self._stalled = stalled
            metrics.STALLED.inc() if stalled else metrics.STALLED.dec()

    async def process(self, arrived: Arrival, started: float) -> Disposition:
        """The job's steps; raises on a fault that is not the recipient's."""
        if arrived.job is None:
            return ToDead("invalid_job", arrived.invalid or "")
        turn = InTurn(arrived.job, self._w.account_id, arrived.home)
        structlog.contextvars.bind_contextvars(delivery_id=turn.job.delivery_id,
                                               index=turn.job.index)
        ready = await prepare(self._w, self._parts, self.outcomes, turn)
        if not isinstance(ready, Prepared):
            return ready
        waited = await self.wait_for_turn(turn)
        if waited is not None:
            return waited
        self._w.pacer.observe(started)
        return await self.send(turn, ready)

    async def wait_for_turn(self, turn: InTurn) -> Disposition | None:
        """The account's lease and pause, within its quotas; a disposition when the job
        cannot wait for them in hand."""
        while True:
            try:
                await self._w.pacer.turn()
                return None
            except QuotaReached as full:
                wait_s = (full.resumes_at - datetime.now(UTC)).total_seconds()
                if wait_s <= self._parts.settings.quota_hold_s:
                    # A slot frees soon (sends spread over the window): waited out in hand.
                    await self._clock.sleep(max(0.0, wait_s))
                    continue
                # Not a fault: the account waits until the oldest send leaves the window (it
                # may not hold the job that long: RabbitMQ's consumer timeout).
                limit = self._w.quotas.limit(full.window)
                await self._w.pause("quota", None, f"quota_per_{full.window} of {limit} "
                                    "messages reached", resumes_at=full.resumes_at,
                                    window=full.window)
                return ToQueue(turn.queue_account)

    async def send(self, turn: InTurn, ready: Prepared) -> Disposition:
        job, pacer = turn.job, self._w.pacer
        check = RowCheck(self._db, job, ready.session)
        started = time.perf_counter()
        try:
            with pacer.guard():
                code, text = await ready.session.send(
                    self._envelope_sender(ready.composer, job), envelope_address(job.email),
                    ready.mail.data, before_data=check.still_to_send)
        except Withdrawn:
            return await self.on_withdrawn(turn, check.task.result())
        except SmtpStageError as error:
            row = await check.task
            if on_arrival.done_with(row):
                await self._w.recorder.mark_end()
                return await self.outcomes.already_done(turn, row)
            return await self.outcomes.failed(turn, row, ready.metadata, error, classify(error))
        finally:
            # Whatever happened, the pause runs from the end of this transaction (for a
            # 250: from the 250, before anything is recorded).
            pacer.ended()
            check.task.cancel()  # only when something else failed first: nothing waits for it
            metrics.SEND_SECONDS.observe(time.perf_counter() - started)
        return await self.on_success(turn, ready, code, text)

    async def on_withdrawn(self, turn: InTurn, row: Any) -> Disposition:
        self._look_first = True
        await self._w.recorder.mark_end()
        if on_arrival.done_with(row):
            return await self.outcomes.already_done(turn, row)
        if on_arrival.expired(row):
            await on_arrival.expire(self._w.recorder, turn.job, row, turn.queue_account)
            return Ack()
        # Its delivery was paused while the job waited for its turn.
        if await self._db.hold(turn.job.delivery_id, turn.job.index):
            return Ack()
        return ToQueue(turn.queue_account)  # resumed meanwhile: sent in its turn

    async def on_success(self, turn: InTurn, ready: Prepared, code: int,
                         text: str) -> Disposition:
        self.outcomes.connect_failures = 0
        self.outcomes.quota_replies = 0
        self._look_first = False
        accepted_at = self._w.pacer.ended_at
        await self.outcomes.settle(turn, ready.metadata, "sent", code, text,
                                   ready.mail.message_id, touched_server=True)
        await self._w.pace.succeeded(accepted_at)
        return Ack()

    def _envelope_sender(self, composer: Composer, job: SendJob) -> str:
        """The account's address, or with a bounce_address its VERP form for this recipient:
        its bounces come back to an address that names it (the sending account's, also as a
        standby: its server takes the envelope, its mailbox gets the bounces)."""
        base = self._w.account["bounce_address"]
        if base and self._parts.verp.enabled:
            return envelope_address(self._parts.verp.address(base, composer.delivery_ref,
                                                             job.index))
        return envelope_address(self._w.account["from_address"])
