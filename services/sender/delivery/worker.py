"""One account: its consumer's messages, its SMTP session, its outcomes.

The send path runs one way:

    edge (`on_message`: decode, and at the end ack / put back / retry / dead-letter: the only
    code that touches the AMQP message) -> pacer (lease, pause) -> SMTP session ->
    classify (pure) -> outcome (pure: the action) -> recorder (ledger and outbox, retried in
    place) -> edge again.

A message is acked only after its outcome is in the ledger, its event in the outbox beside it
(one transaction; the relay publishes the events with confirms). A fault that is not the
recipient's (the database or the broker away, an unexpected error) never fails the recipient
and never puts the job back to count against the queue's delivery limit: the job stays in
hand (prefetch 1, so the account takes no other) and is tried again after a backoff.
"""

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import ChannelInvalidStateError, DeliveryError
from pydantic import ValidationError

from services.sender import metrics, store
from services.sender.delivery.classify import Verdict, classify, decayed_interval_ms
from services.sender.delivery.compose import Composer, account_address_problem, envelope_address
from services.sender.delivery.outcome import Defer, PauseAccount, Settle, after_failure
from services.sender.delivery.pacer import Pacer, QuotaReached
from services.sender.delivery.recorder import Recorder
from services.sender.delivery.throttle import RateLearner
from services.sender.delivery.turns import Interrupted, Turns
from services.sender.parts import SenderParts
from shared.accounts import smtp_endpoint
from shared.crypto import UndecryptableSecret
from shared.messages import (
    AccountPaused,
    AccountResumed,
    AccountThrottled,
    DeliveryCompleted,
    Event,
    MailDeferred,
    MailFailed,
    MailSent,
    SendJob,
    stable_event_id,
)
from shared.smtp import SmtpSession, SmtpStageError, Withdrawn
from shared.topology import make_message, publish

log = structlog.get_logger(__name__)

PauseHook = Callable[["AccountWorker"], Awaitable[None]]
FIRST_JOB_RETRY_S = 0.5
MAX_JOB_RETRY_S = 30.0
QUOTA_WINDOWS_S = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Seen:
    """A job as it arrived: decoded, with its ledger row."""
    job: SendJob
    row: Any


# -- what the edge does with the message at the end ---------------------------------------


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class ToQueue:
    """Back to an account's queue (its tail), then acked: a paused account's job, or a job
    found on another account's queue."""
    account_id: str


@dataclass(frozen=True)
class ToRetry:
    delay_s: int


@dataclass(frozen=True)
class ToDead:
    reason: str
    detail: str


Disposition = Ack | ToQueue | ToRetry | ToDead


def _channel_open(message: AbstractIncomingMessage) -> bool:
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False


def expired(row: Any) -> bool:
    """The recipient's delivery has an `expires_at`, and it has passed."""
    return row["expires_at"] is not None and datetime.now(UTC) >= row["expires_at"]


def sendable(row: Any) -> bool:
    """The recipient's row, if any, says the job may be sent now."""
    return (row is not None and row["state"] not in store.NOT_TO_SEND and not expired(row)
            and row["paused_at"] is None)


def clean_text(text: str) -> str:
    """A server's words as the database and JSON take them: aiosmtplib keeps bytes that are
    not UTF-8 as surrogates, and PostgreSQL refuses NUL; a record that can never be written
    would hold a sent mail's job for ever."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")


class AccountWorker:
    def __init__(self, account: Any, parts: SenderParts, on_pause: PauseHook) -> None:
        self.account_id = str(account["id"])
        self._parts = parts
        self._on_pause = on_pause
        # The lease is this worker's, not the replica's: two workers never send at once.
        self.token = f"{parts.settings.replica_id}/{secrets.token_hex(4)}"
        self._lease = store.AccountLease(parts.pool, self.account_id)
        self.pacer = Pacer(self._lease, self.token, ttl_s=parts.settings.lease_ttl_s)
        self.turns = Turns(self.pacer.ready_at)  # an urgent job first, when the pause ends
        self._follow(account)
        self._recorder = Recorder(parts.pool, self.account_id, self.token, parts.database)
        self._session: SmtpSession | None = None
        self._session_stale = False  # the account changed during a send: reopen after it
        self._tasks: set[asyncio.Task] = set()
        self._home: Any | None = None  # the account stood in for, during its job
        self._urgent = False  # the job in hand came from an urgent queue
        self._connect_failures = 0
        self._successes = 0
        self._quota_replies = 0  # in a row: each doubles the wait before trying again
        self._rate = RateLearner()  # a throttling provider's window, once it refuses
        self._stalled = False
        # The last job was withdrawn before DATA (cancelled, expired, held back): its
        # neighbours likely are too, so each job's row is read on arrival until one is sent.
        self._look_first = False
        self.throttled = False
        self.paused = False  # by this worker; it takes no message until resumed
        self.consuming = False  # set by the supervisor around its consumer
        # Set by the supervisor: jobs wait on it while a batch of accounts is subscribed.
        self.gate: asyncio.Event | None = None
        self.queue: AbstractQueue | None = None
        self.consumer_tag: str | None = None
        self.delivered = False  # a job came since the consumer was made
        self.busy = asyncio.Lock()

    @property
    def interval_ms(self) -> int:
        return self.pacer.interval_ms

    # -- account changes ------------------------------------------------------------------

    def _follow(self, account: Any) -> None:
        """What the account's settings decide: its pace, its quotas, whether its From can
        be written."""
        self.account = account
        self.pacer.interval_ms = self._effective_interval(account)
        self._lease.quotas = store.Quotas.of(account)
        self.pacer.counts_quotas = bool(self._lease.quotas)
        self._address_problem = account_address_problem(account["from_address"],
                                                        account["reply_to"])

    def _effective_interval(self, account: Any) -> int:
        configured = account["send_interval_ms"]
        throttled = account["throttled_interval_ms"] or 0
        return min(max(configured, throttled), self._parts.settings.max_interval_ms)

    async def update(self, account: Any) -> None:
        """New settings: the next send opens a session with them (a session in use is
        closed after its send, never under it)."""
        self._follow(account)
        if self.busy.locked():
            self._session_stale = True
        else:
            await self.close_session()

    async def close_session(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def close_if_idle(self, now: float) -> None:
        if (self._session is not None and not self.busy.locked()
                and now - self.pacer.ended_at > self._parts.settings.smtp_idle_close_s):
            async with self.busy:
                await self.close_session()

    async def _session_for_send(self) -> SmtpSession:
        """Raises UndecryptableSecret when the account's password cannot be read."""
        if self._session_stale:
            self._session_stale = False
            await self.close_session()
        if self._session is None:
            self._session = SmtpSession(
                smtp_endpoint(self.account, self._parts.box), ssl_context=self._parts.ssl_context,
                timeout_s=self._parts.settings.smtp_timeout_s,
                pop_max_age_s=self._parts.settings.pop_max_age_s)
        return self._session

    # -- the edge -------------------------------------------------------------------------

    async def on_message(self, message: AbstractIncomingMessage, urgent: bool = False) -> None:
        self.delivered = True  # the active consumer of its queues (a standby is given none)
        await self._shielded(message, None, urgent)

    def standing_in(self, home: Any) -> Callable[[AbstractIncomingMessage, bool],
                                                 Awaitable[None]]:
        """The consumer of a paused account's queues while this account stands in for it:
        its jobs go out through this account's server, pace and quotas, with its From."""
        async def on_message(message: AbstractIncomingMessage, urgent: bool) -> None:
            await self._shielded(message, home, urgent)
        return on_message

    async def _shielded(self, message: AbstractIncomingMessage, home: Any | None,
                        urgent: bool) -> None:
        # The job runs in a task of its own: a channel that closes cancels its consumers'
        # callbacks, and a send cancelled between its 250 and its record would be sent again.
        task = asyncio.create_task(self._take(message, home, urgent))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    @property
    def _queue_account(self) -> str:
        """The account whose queue the job in hand came from."""
        return str(self._home["id"]) if self._home is not None else self.account_id

    @property
    def _requested(self) -> str | None:
        return str(self._home["id"]) if self._home is not None else None

    def _key(self, account_id: str) -> str:
        """The routing key back to the account's queue the job in hand came from."""
        return self._parts.topology.send_key(account_id, self._urgent)

    async def _take(self, message: AbstractIncomingMessage, home: Any | None,
                    urgent: bool) -> None:
        gate = self.gate
        if gate is not None:
            # Subscribed in a batch: the job waits in hand until the batch is subscribed (a
            # first send per account, thousands at once, would slow the rest of it).
            await gate.wait()
        seen = await self._look(message, home) if self._worth_a_look() else None
        if seen is not None and await self._skip(message, seen, home):
            return
        if self.paused or not self.consuming:
            await self._give_back(message)
            return
        try:
            async with self.turns.turn(urgent), self.busy:
                await self._take_in_turn(message, home, urgent, seen)
        except Interrupted:
            await self._give_back(message)

    def stop_waiting(self) -> None:
        """The consumer was cancelled: the jobs waiting for a turn go back to the broker at
        once (another replica, or a standby, may take them), not when their turn comes."""
        self.turns.interrupt()

    @staticmethod
    async def _give_back(message: AbstractIncomingMessage) -> None:
        # Delivered before our cancel reached the broker: back to the head.
        with contextlib.suppress(Exception):
            await message.nack(requeue=True)

    async def _take_in_turn(self, message: AbstractIncomingMessage, home: Any | None,
                            urgent: bool, seen: Seen | None) -> None:
        self._home = home
        self._urgent = urgent
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(account_id=self.account_id)
        if home is not None:
            structlog.contextvars.bind_contextvars(requested_account_id=str(home["id"]))
        arrived = time.monotonic()
        delay = FIRST_JOB_RETRY_S
        disposition: Disposition | None = None
        try:
            while True:
                if disposition is None and (self.paused or not self.consuming):
                    await self._give_back(message)
                    return
                try:
                    if disposition is None:
                        disposition = await self._process(message.body, arrived, seen)
                    # Once decided, only the message's fate is retried, not the send.
                    await self._carry_out(message, disposition)
                    return
                except Exception:
                    if not _channel_open(message):
                        log.warning("the job's channel closed: the broker gives the job "
                                    "again (its outcome, if any, is recorded)")
                        return
                    self._stall(True)
                    metrics.JOB_RETRIES.labels(self.account_id).inc()
                    log.exception("job failed for a reason not the recipient's; it stays "
                                  "in hand and is tried again", retry_in_s=delay)
                    if disposition is None:
                        await self._drop_session()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_JOB_RETRY_S)
        finally:
            self._stall(False)
            self._home = None
            self._urgent = False

    def _worth_a_look(self) -> bool:
        """Whether a job's row is read on its arrival, to skip it without a wait: when it would
        wait (the account's pause, another job in hand, a lease to take, perhaps after
        another replica's send), or after a withdrawal. A job sent
        at once needs no such read: its row is read anyway while MAIL and RCPT are on the wire
        (one round trip a mail fewer on a busy account)."""
        return (self._look_first or self.busy.locked() or not self.pacer.holds_lease
                or self.pacer.ready_at() > time.monotonic())

    async def _look(self, message: AbstractIncomingMessage, home: Any | None) -> Seen | None:
        """The job and its ledger row, on its arrival; None when either cannot be had (the
        job's ordinary path decodes and reads again, and has the fault handling)."""
        try:
            job = SendJob.model_validate_json(message.body)
        except ValidationError:
            return None
        queue_account = str(home["id"]) if home is not None else self.account_id
        if job.account_id != queue_account:
            return None
        try:
            row = await store.recipient(self._parts.pool, job.delivery_id, job.index)
        except Exception:
            log.warning("reading a job's ledger row on its arrival failed; it takes its turn",
                        exc_info=True, delivery_id=job.delivery_id, index=job.index)
            return None
        return Seen(job, row) if row is not None else None

    async def _skip(self, message: AbstractIncomingMessage, seen: Seen,
                    home: Any | None) -> bool:
        """A job that needs no turn, acked at once without waiting for the account's pause:
        its recipient was cancelled, is past its delivery's `expires_at` (settled as
        `expired` here), or its delivery is paused (the recipient waits as `scheduled`; the
        dispatcher publishes its job again on resume; a `scheduled` recipient's job is never
        sent: it is a stale copy). A cancelled newsletter of 20,000 jobs drains in seconds,
        not in 20,000 pauses. Whatever fails here is left to the job's ordinary path, which
        reads the ledger again and has the fault handling."""
        job, row = seen.job, seen.row
        queue_account = str(home["id"]) if home is not None else self.account_id
        try:
            state = row["state"]
            if state in store.SETTLED - {"cancelled", "expired"}:
                return False
            if state in ("queued", "deferred", "new"):
                if expired(row):
                    await self._expire(job, row, queue_account)
                elif row["paused_at"] is None or not await store.hold(
                        self._parts.pool, job.delivery_id, job.index):
                    return False
            await message.ack()
        except Exception:
            log.warning("skipping a cancelled or expired job failed; it takes its turn",
                        exc_info=True, delivery_id=job.delivery_id, index=job.index)
            return False
        metrics.SKIPPED.labels(self.account_id).inc()
        return True

    async def _expire(self, job: SendJob, row: Any, account_id: str) -> None:
        """Contract §6: not sent at all, `mail.failed` with reason `expired`, no server
        asked."""
        text = f"not sent by the delivery's expires_at ({row['expires_at'].isoformat()})"
        event = MailFailed(
            event_id=stable_event_id(job.job_id, "expired"), delivery_id=job.delivery_id,
            metadata=row["metadata"], account_id=account_id, recipient=job.email, stage=None,
            smtp_code=None, smtp_message=text, permanent=True, attempts=0, reason="expired")
        recorded = await self._recorder.record(
            delivery_id=job.delivery_id, index=job.index, state="expired", code=None,
            text=text, message_id=None, touched_server=False, hold=None,
            event=event.model_dump(mode="json"),
            completed_id=stable_event_id(job.delivery_id, "completed"))
        if recorded.applied:
            self._parts.wake_events()
            metrics.OUTCOMES.labels(self.account_id, "expired").inc()
            log.info("recipient expired; not sent", delivery_id=job.delivery_id,
                     index=job.index)

    async def _carry_out(self, message: AbstractIncomingMessage,
                         disposition: Disposition) -> None:
        topology = self._parts.topology
        if isinstance(disposition, ToQueue):
            try:
                await self._republish(message, topology.send_exchange,
                                      self._key(disposition.account_id))
            except DeliveryError:
                if disposition.account_id == self._queue_account:
                    raise
                # Its own account has no queue any more (deleted): nothing may send it.
                await self._carry_out(message, ToDead(
                    "wrong_account", f"a job of account {disposition.account_id} found on the "
                    f"queue of {self._queue_account}, and its own queue is gone"))
                return
        elif isinstance(disposition, ToRetry):
            await self._republish(message, topology.retry_name(disposition.delay_s),
                                  self._key(self._queue_account),
                                  {"x-retry-delay-s": disposition.delay_s})
        elif isinstance(disposition, ToDead):
            original = (topology.urgent_queue if self._urgent
                        else topology.account_queue)(self._queue_account)
            await self._republish(message, topology.dead_exchange, self._queue_account, {
                "x-reason": disposition.reason, "x-detail": disposition.detail,
                "x-original-queue": original})
            log.warning("job moved to the dead-letter queue", reason=disposition.reason,
                        detail=disposition.detail)
        await message.ack()

    async def _republish(self, message: AbstractIncomingMessage, exchange_name: str,
                         routing_key: str, headers: dict | None = None) -> None:
        exchange = await self._exchange(exchange_name)
        await publish(exchange, routing_key, make_message(
            message.body, message_id=message.message_id or "",
            headers={**(message.headers or {}), **(headers or {})}, type_=message.type))

    def _stall(self, stalled: bool) -> None:
        if stalled != self._stalled:
            self._stalled = stalled
            metrics.STALLED.inc() if stalled else metrics.STALLED.dec()

    async def _drop_session(self) -> None:
        """After an unexpected error the session's state is not known: start afresh."""
        try:
            await self.close_session()
        except Exception:
            log.exception("closing the SMTP session failed")

    # -- one job --------------------------------------------------------------------------

    async def _process(self, body: bytes, arrived: float, seen: Seen | None) -> Disposition:
        if seen is not None:
            job = seen.job
        else:
            try:
                job = SendJob.model_validate_json(body)
            except ValidationError as error:
                return ToDead("invalid_job", str(error)[:500])
        structlog.contextvars.bind_contextvars(delivery_id=job.delivery_id, index=job.index)
        if job.account_id != self._queue_account:
            # Never through this account's server and From: back to its own account's queue.
            metrics.MISROUTED.inc()
            log.error("a job of another account on this account's queue: sent back to its own",
                      job_account_id=job.account_id)
            return ToQueue(job.account_id)
        if self._address_problem is not None:
            await self._pause("account", None, self._address_problem)
            return ToQueue(self._queue_account)
        try:
            # The From is the one the delivery asked for: its own account's, also when a
            # standby sends it (the standby may: failover.may_send_as).
            composer, metadata = await self._parts.composers.get(
                job.delivery_id, self._home if self._home is not None else self.account)
            mail = composer.compose(email=job.email, name=job.name, vars=job.vars)
        except (LookupError, ValueError) as error:
            row = await store.recipient(self._parts.pool, job.delivery_id, job.index)
            if row is None or row["state"] in store.NOT_TO_SEND:
                return await self._already_done(job, row)
            if isinstance(error, LookupError):
                raise
            # A message that can never be written: failed, never retried.
            await self._settle(job, row["metadata"], "failed", None, f"not sendable: {error}",
                               None, touched_server=False, stage="data", permanent=True)
            return Ack()
        try:
            session = await self._session_for_send()
        except UndecryptableSecret as error:
            await self._pause("secret", None, str(error))
            return ToQueue(self._queue_account)

        while True:
            try:
                await self.pacer.turn()
                break
            except QuotaReached as full:
                wait_s = (full.resumes_at - datetime.now(UTC)).total_seconds()
                if wait_s <= self._parts.settings.quota_hold_s:
                    # A slot frees soon (sends spread over the window): waited out in hand.
                    await asyncio.sleep(max(0.0, wait_s))
                    continue
                # Not a fault: the account waits until the oldest send leaves the window (it
                # may not hold the job that long: RabbitMQ's consumer timeout).
                limit = self._lease.quotas.limit(full.window)
                await self._pause("quota", None, f"quota_per_{full.window} of {limit} "
                                  "messages reached", resumes_at=full.resumes_at,
                                  window=full.window)
                return ToQueue(self._queue_account)
        self.pacer.observe(arrived)
        # The ledger row is read while MAIL and RCPT are on the wire; DATA waits for it.
        check = asyncio.ensure_future(
            store.recipient(self._parts.pool, job.delivery_id, job.index))
        opened = session.connections

        async def still_to_send() -> bool:
            nonlocal check
            if session.connections != opened:
                # A connection was opened after the read began (the first, or a stale one
                # replaced): a cancel may have committed meanwhile, before this MAIL.
                check.cancel()
                check = asyncio.ensure_future(
                    store.recipient(self._parts.pool, job.delivery_id, job.index))
            return sendable(await check)

        started = time.perf_counter()
        try:
            with self.pacer.guard():
                code, text = await session.send(
                    self._envelope_sender(composer, job), envelope_address(job.email),
                    mail.data, before_data=still_to_send)
        except Withdrawn:
            self._look_first = True
            await self._recorder.mark_end()
            row = check.result()
            if row is not None and row["state"] not in store.NOT_TO_SEND:
                if expired(row):
                    await self._expire(job, row, self._queue_account)
                    return Ack()
                # Its delivery was paused while the job waited for its turn.
                if await store.hold(self._parts.pool, job.delivery_id, job.index):
                    return Ack()
                return ToQueue(self._queue_account)  # resumed meanwhile: sent in its turn
            return await self._already_done(job, row)
        except SmtpStageError as error:
            row = await check
            if row is None or row["state"] in store.NOT_TO_SEND:
                await self._recorder.mark_end()
                return await self._already_done(job, row)
            return await self._failed(job, row, metadata, error, classify(error))
        finally:
            # Whatever happened, the pause runs from the end of this transaction (for a
            # 250: from the 250, before anything is recorded).
            self.pacer.ended()
            check.cancel()  # only when something else failed first: nothing waits for it
            metrics.SEND_SECONDS.observe(time.perf_counter() - started)
        self._connect_failures = 0
        self._quota_replies = 0
        self._look_first = False
        accepted_at = self.pacer.ended_at
        await self._settle(job, metadata, "sent", code, text, mail.message_id,
                           touched_server=True)
        await self._after_success(accepted_at)
        return Ack()

    def _envelope_sender(self, composer: Composer, job: SendJob) -> str:
        """The account's address, or with a bounce_address its VERP form for this recipient:
        its bounces come back to an address that names it (the sending account's, also as a
        standby: its server takes the envelope, its mailbox gets the bounces)."""
        base = self.account["bounce_address"]
        if base and self._parts.verp.enabled:
            return envelope_address(self._parts.verp.address(base, composer.delivery_ref,
                                                             job.index))
        return envelope_address(self.account["from_address"])

    async def _already_done(self, job: SendJob, row: Any) -> Disposition:
        """An unknown job goes to the dead letters; a copy of a job already done (a redelivery
        after a crash) is acked with its events again, same ids, and no second SMTP
        transaction."""
        if row is None:
            return ToDead("unknown_delivery", f"no recipient row for {job.job_id}")
        state = row["state"]
        if state in ("cancelled", "expired", "scheduled"):
            log.info("job cancelled, expired or held back; not sent", outcome=state)
            return Ack()
        if state == "sent":
            await self._parts.events.publish(MailSent(
                event_id=stable_event_id(job.job_id, "sent"), delivery_id=job.delivery_id,
                metadata=row["metadata"], account_id=self.account_id, recipient=job.email,
                message_id=row["message_id"] or "", smtp_code=row["last_smtp_code"] or 250,
                attempts=row["attempts"], requested_account_id=self._requested))
        if row["completed_at"] is not None:
            # `failed` counts the unknown outcomes too: the contract's event has sent, failed.
            await self._parts.events.publish(DeliveryCompleted(
                event_id=stable_event_id(job.delivery_id, "completed"),
                delivery_id=job.delivery_id, metadata=row["metadata"], sent=row["sent"],
                failed=row["failed"] + row["unknown"], cancelled=row["cancelled"],
                suppressed=row["suppressed"], total=row["total"]))
        log.info("job already settled; not sent again", outcome=state)
        return Ack()

    # -- outcomes -------------------------------------------------------------------------

    async def _failed(self, job: SendJob, row: Any, metadata: dict, error: SmtpStageError,
                      verdict: Verdict) -> Disposition:
        log.info("smtp failure", stage=error.stage, smtp_code=error.code, kind=verdict.kind,
                 smtp_message=error.text)
        words = clean_text(error.text)
        settings = self._parts.settings
        action = after_failure(
            verdict, error.text, attempt=row["attempts"] + 1,
            age=datetime.now(UTC) - job.first_queued_at,
            max_age=timedelta(seconds=settings.retry_max_age_s),
            retry_unknown=settings.retry_unknown, tiers=self._parts.topology.retry_delays_s)
        if isinstance(action, PauseAccount):
            # Not one recipient is failed for the account's fault or its provider's quota.
            self.pacer.forget()
            await self._recorder.release_lease(touched_server=True)
            resumes_at = None
            if action.reason == "quota":
                resumes_at = datetime.now(UTC) + timedelta(seconds=self._quota_wait_s(action))
                self._quota_replies += 1
            await self._pause(action.reason, error.code, words, error.stage,
                              resumes_at=resumes_at, window=action.window)
            return ToQueue(self._queue_account)
        if action.throttled:
            await self._slow_down(error, verdict)
        if isinstance(action, Settle):
            await self._settle(job, metadata, action.state, error.code, action.text, None,
                               touched_server=True, stage=action.stage,
                               permanent=action.permanent, unknown=action.state == "unknown")
            return Ack()
        assert isinstance(action, Defer)
        attempts = row["attempts"] + 1
        event = MailDeferred(
            event_id=stable_event_id(job.job_id, "deferred", attempts),
            delivery_id=job.delivery_id, metadata=metadata, account_id=self.account_id,
            recipient=job.email, smtp_code=error.code, smtp_message=words,
            attempts=attempts, retry_at=datetime.now(UTC) + timedelta(seconds=action.delay_s),
            requested_account_id=self._requested)
        await self._record(job, "deferred", error.code, words, None, touched_server=True,
                           event=event)
        metrics.OUTCOMES.labels(self.account_id, "deferred").inc()
        if action.connect_failure:
            self._connect_failures += 1
            if self._connect_failures >= settings.connect_failures_to_pause:
                await self._pause("connect", error.code, words, error.stage)
        return ToRetry(action.delay_s)

    def _quota_wait_s(self, action: PauseAccount) -> float:
        """The wait the provider named; else a wait that doubles at each quota reply in a
        row, up to the window it named (a day when it named none)."""
        if action.wait_s:
            return action.wait_s
        longest = QUOTA_WINDOWS_S.get(action.window or "day", 86400)
        return min(self._parts.settings.quota_wait_s * 2 ** self._quota_replies, longest)

    async def _settle(self, job: SendJob, metadata: dict, state: str, code: int | None,
                      text: str, message_id: str | None, *, touched_server: bool,
                      stage: str = "data", permanent: bool = True,
                      unknown: bool = False) -> None:
        event: Event  # attempts is filled in by the ledger, which counts them
        text = clean_text(text)
        if state == "sent":
            event = MailSent(
                event_id=stable_event_id(job.job_id, "sent"), delivery_id=job.delivery_id,
                metadata=metadata, account_id=self.account_id, recipient=job.email,
                message_id=message_id or "", smtp_code=code or 250, attempts=0,
                requested_account_id=self._requested)
        else:
            event = MailFailed(
                event_id=stable_event_id(job.job_id, state), delivery_id=job.delivery_id,
                metadata=metadata, account_id=self.account_id, recipient=job.email,
                stage=stage, smtp_code=code, smtp_message=text, permanent=permanent,
                attempts=0, outcome="unknown" if unknown else "failed",
                requested_account_id=self._requested)
        await self._record(job, state, code, text, message_id, touched_server, event)
        metrics.OUTCOMES.labels(self.account_id, state).inc()
        if touched_server:
            metrics.LAST_SEND.labels(self.account_id).set_to_current_time()
        log.info("recipient settled", outcome=state, smtp_code=code)

    async def _record(self, job: SendJob, state: str, code: int | None, text: str,
                      message_id: str | None, touched_server: bool, event: Event) -> None:
        # The lease is kept only while this worker still consumes: after a cancel or a pause
        # another worker may have the queue, and should not wait for it.
        keep = touched_server and self.consuming and not self.paused
        hold = timedelta(milliseconds=self.interval_ms,
                         seconds=self._parts.settings.lease_hold_s) if keep else None
        asked = time.monotonic()
        recorded = await self._recorder.record(
            delivery_id=job.delivery_id, index=job.index, state=state, code=code, text=text,
            message_id=message_id, touched_server=touched_server, hold=hold,
            event=event.model_dump(mode="json"),
            completed_id=stable_event_id(job.delivery_id, "completed"))
        if recorded.applied:
            self._parts.wake_events()
        if touched_server:
            kept = recorded.lease_kept and hold is not None
            self.pacer.kept(asked, hold.total_seconds() if kept and hold else None)

    # -- the account's pace ---------------------------------------------------------------

    async def _slow_down(self, error: SmtpStageError, verdict: Verdict) -> None:
        """The provider refused for rate: the next try waits (the wait it named, or what the
        learner says), and the learner takes the refusal into its estimate of the provider's
        window; the configured interval stays the floor."""
        now = time.monotonic()
        wait_s = self._rate.refused(now, verdict.retry_after_s)
        self.pacer.not_before = now + wait_s
        pace = self._rate.pace_ms
        shown = max(pace if pace is not None else round(wait_s * 1000),
                    self.account["send_interval_ms"])
        if not self.throttled:
            self.throttled = True
            metrics.THROTTLED.inc()
        log.warning("account throttled by its provider", wait_s=round(wait_s, 3),
                    learnt_limit=self._rate.limit, learnt_window_s=self._rate.window_s)
        try:  # the slower pace holds here at once; storing and announcing it may lag
            await store.set_interval(self._parts.pool, self.account_id,
                                      pace if pace is not None and pace > self.interval_ms
                                      else None)
            await self._parts.events.publish(AccountThrottled(
                account_id=self.account_id, smtp_code=error.code,
                smtp_message=clean_text(error.text), interval_ms=shown))
        except Exception:
            log.exception("storing or announcing the slower pace failed")

    async def _after_success(self, accepted_at: float) -> None:
        # Every success counts: the run a refusal ends tells the provider's limit.
        self._rate.succeeded(accepted_at)
        # The provider's learnt window: the next send waits until it allows one.
        self.pacer.not_before = self._rate.next_allowed(accepted_at)
        configured = self.account["send_interval_ms"]
        if self.interval_ms <= configured:
            return
        # A pace stored by an earlier throttling (a restart): back to the configured one
        # step by step, as before, while the learner watches the window itself.
        self._successes += 1
        slower = decayed_interval_ms(self.interval_ms, configured, self._successes)
        if slower == self.interval_ms:
            return
        self.pacer.interval_ms = slower
        at_pace = slower <= configured
        try:
            await store.set_interval(self._parts.pool, self.account_id,
                                      None if at_pace else slower)
        except Exception:
            # The outcome is recorded; the next success writes the pace again.
            log.exception("storing the account's pace failed")
        if at_pace and self.throttled and not self._rate.learnt:
            self.throttled = False
            metrics.THROTTLED.dec()

    # -- a broken account -----------------------------------------------------------------

    async def _pause(self, reason: str, code: int | None, text: str,
                     stage: str | None = None, *, resumes_at: datetime | None = None,
                     window: str | None = None) -> None:
        """Stops the account: the pause is stored first (retried until it is, its event in
        the outbox beside it), then the consumer is cancelled; an account change, an
        operator, a successful probe or, for a quota, `resumes_at` ends it."""
        detail = f"{stage}: {code or ''} {text}".strip() if stage else text
        event = AccountPaused(account_id=self.account_id, reason=reason, smtp_code=code,
                              smtp_message=text, resumes_at=resumes_at,
                              window=window)  # type: ignore[arg-type]
        await self._recorder.set_paused(reason, detail, event.model_dump(mode="json"),
                                        resumes_at)
        self._parts.wake_events()
        self.paused = True
        await self.close_session()
        log.warning("account paused", reason=reason, smtp_code=code, smtp_message=text)
        await self._on_pause(self)

    async def resume(self, announce: bool = True) -> None:
        """Ends the sender's pause; `announce` is False when config_svc has already
        published `account.resumed` (an operator's resume). Announced once, whichever
        replica resumes first."""
        event = AccountResumed(account_id=self.account_id) if announce else None
        await store.set_paused(self._parts.pool, self.account_id, None, None,
                                event.model_dump(mode="json") if event else None)
        self._parts.wake_events()
        self._connect_failures = 0
        self.paused = False
        log.info("account resumed")

    async def probe(self) -> bool:
        """Can the server be reached and logged in to again? (For connection pauses.)"""
        try:
            endpoint = smtp_endpoint(self.account, self._parts.box)
        except UndecryptableSecret:
            log.warning("probe impossible: the account's password cannot be decrypted")
            return False
        session = SmtpSession(endpoint, ssl_context=self._parts.ssl_context,
                              timeout_s=self._parts.settings.smtp_timeout_s)
        try:
            await session.open()
        except SmtpStageError as error:
            log.info("probe failed", stage=error.stage, smtp_message=error.text)
            return False
        finally:
            await session.close()
        return True

    async def release_lease(self) -> None:
        """Gives back a lease still held, between sends (consumer cancelled, shutdown)."""
        await self.pacer.release()

    async def _exchange(self, name: str) -> AbstractExchange:
        """An exchange of the topology (declared at start) on the confirmed channel."""
        return await self._parts.publish_channel.get_exchange(name, ensure=False)
