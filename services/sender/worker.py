"""One account: its consumer, its SMTP session, its pace, its outcomes.

A message is acked only after its outcome is in the ledger, its event in the outbox beside it
(one transaction; the relay publishes the events with confirms).

Pacing: the account's lease is taken with one UPDATE on the database clock; the outcome's
transaction keeps it for the pause plus `lease_hold_s`, so back-to-back sends of a busy account
need no round trip for it, and another replica still cannot send before the pause is over.
"""

import asyncio
import hashlib
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from pydantic import ValidationError

from services.sender import ledger, metrics
from services.sender.classify import (
    Kind,
    Verdict,
    classify,
    decayed_interval_ms,
    next_interval_ms,
    retry_delay,
)
from services.sender.compose import Composer, envelope_address
from services.sender.settings import SenderSettings
from shared.accounts import smtp_endpoint
from shared.crypto import SecretBox
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
)
from shared.smtp import SmtpSession, SmtpStageError, Withdrawn
from shared.topology import EventPublisher, Topology, make_message, publish

log = structlog.get_logger(__name__)

PauseHook = Callable[["AccountWorker"], Awaitable[None]]
# A held lease is used only with this much of it left after the pause; a send outlasting the
# lease's end less this renews it.
LEASE_MARGIN_S = 1.0


async def sleep_until(deadline: float) -> None:
    """Returns at `deadline` (time.monotonic) or after, never before. A loop's timers need
    not promise that (uvloop's, with millisecond steps on a clock read once per iteration,
    end up to ~0.7 ms early half the time), and a pause must never be short."""
    while (left := deadline - time.monotonic()) > 0:  # noqa: ASYNC110 - a deadline, not an event
        await asyncio.sleep(left)


def stable_event_id(*parts: object) -> str:
    """The same event gets the same id when a crash makes us publish it again."""
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:32]


class Composers:
    """Per-delivery composers (the parts common to a delivery built once), most recent kept."""

    def __init__(self, pool: asyncpg.Pool, size: int = 1024) -> None:
        self._pool = pool
        self._size = size
        self._cache: OrderedDict[str, tuple[Composer, dict]] = OrderedDict()

    async def get(self, delivery_id: str, account: Any) -> tuple[Composer, dict]:
        key = f"{delivery_id}:{account['updated_at']}"
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        content, metadata = await ledger.content(self._pool, delivery_id, account)
        entry = (Composer(content), metadata)
        self._cache[key] = entry
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return entry


@dataclass(frozen=True)
class SenderParts:
    """What a sender's supervisor and every account worker share, built once in `main`."""
    pool: asyncpg.Pool
    settings: SenderSettings
    box: SecretBox
    ssl_context: ssl.SSLContext
    topology: Topology
    events: EventPublisher  # account events, published at once
    publish_channel: AbstractChannel  # jobs put back, retried or dead-lettered (confirmed)
    composers: Composers
    wake_events: Callable[[], None]  # the outbox relay's: outcomes' events were committed


class AccountWorker:
    def __init__(self, account: Any, parts: SenderParts, on_pause: PauseHook) -> None:
        self.account_id = str(account["id"])
        self.account = account
        self._parts = parts
        self._on_pause = on_pause
        self._session: SmtpSession | None = None
        self._last_used = 0.0  # monotonic end of the last SMTP transaction
        # Monotonic; the pause runs from here: the return of the last outcome's transaction,
        # which is after the last_end it wrote (so no replica, and no reading of the ledger,
        # sees two sends closer than the interval).
        self._paced_from = 0.0
        self._lease_until = 0.0  # monotonic; before it the lease is surely ours
        self._renewal: asyncio.Task | None = None
        self._connect_failures = 0
        self._successes = 0
        self.interval_ms = self._effective_interval(account)
        self.throttled = False
        self.paused = False
        self.queue: AbstractQueue | None = None
        self.consumer_tag: str | None = None
        self.busy = asyncio.Lock()

    # -- account changes ------------------------------------------------------------------

    def _effective_interval(self, account: Any) -> int:
        configured = account["send_interval_ms"]
        throttled = account["throttled_interval_ms"] or 0
        return min(max(configured, throttled), self._parts.settings.max_interval_ms)

    async def update(self, account: Any) -> None:
        """New settings: the next send opens a session with them."""
        self.account = account
        self.interval_ms = self._effective_interval(account)
        await self.close_session()

    async def close_session(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def close_if_idle(self, now: float) -> None:
        if (self._session is not None and not self.busy.locked()
                and now - self._last_used > self._parts.settings.smtp_idle_close_s):
            async with self.busy:
                await self.close_session()

    def _session_for_send(self) -> SmtpSession:
        if self._session is None:
            self._session = SmtpSession(
                smtp_endpoint(self.account, self._parts.box), ssl_context=self._parts.ssl_context,
                timeout_s=self._parts.settings.smtp_timeout_s,
                pop_max_age_s=self._parts.settings.pop_max_age_s)
        return self._session

    # -- one message ----------------------------------------------------------------------

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async with self.busy:
            if self.paused:
                # Delivered before our cancel reached the broker: back to the queue's head.
                await message.nack(requeue=True)
                return
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(account_id=self.account_id)
            try:
                await self._handle(message)
            except Exception:
                # The database or the broker failed, not the recipient: the message goes
                # back to the queue (nothing was recorded, so nothing is lost or doubled).
                log.exception("job failed; it will be tried again")
                await asyncio.sleep(1)
                await message.nack(requeue=True)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        arrived = time.monotonic()
        try:
            job = SendJob.model_validate_json(message.body)
        except ValidationError as error:
            await self._to_dead(message, "invalid_job", str(error)[:500])
            return
        structlog.contextvars.bind_contextvars(delivery_id=job.delivery_id, index=job.index)
        try:
            composer, metadata = await self._parts.composers.get(job.delivery_id, self.account)
            mail = composer.compose(email=job.email, name=job.name, vars=job.vars)
        except (LookupError, ValueError) as error:
            row = await ledger.recipient(self._parts.pool, job.delivery_id, job.index)
            if await self._done_already(message, job, row):
                return
            if isinstance(error, LookupError):
                raise
            # A message that can never be written: failed, never retried.
            await self._settle(message, job, row["metadata"], "failed", None,
                               f"not sendable: {error}", None, touched_server=False,
                               stage="data", permanent=True)
            return

        await self._wait_for_turn()
        self._observe_pause(arrived)
        # The ledger row is read while MAIL and RCPT are on the wire; DATA waits for it.
        check = asyncio.ensure_future(
            ledger.recipient(self._parts.pool, job.delivery_id, job.index))

        async def still_to_send() -> bool:
            row = await check
            return row is not None and row["state"] not in ledger.SETTLED

        session = self._session_for_send()
        guard = self._guard_lease()
        started = time.perf_counter()
        try:
            code, text = await session.send(
                envelope_address(self.account["from_address"]), envelope_address(job.email),
                mail.data, before_data=still_to_send)
        except Withdrawn:
            # MAIL, RCPT and RSET reached the server: paced like a transaction, not recorded.
            self._last_used = self._paced_from = time.monotonic()
            await self._done_already(message, job, check.result())
            return
        except SmtpStageError as error:
            self._last_used = self._paced_from = time.monotonic()
            if not await self._done_already(message, job, await check):
                await self._failed(message, job, metadata, error, classify(error))
            return
        finally:
            guard.cancel()
            check.cancel()  # only when something else failed first: nothing waits for it
            metrics.SEND_SECONDS.observe(time.perf_counter() - started)
        self._last_used = time.monotonic()
        self._connect_failures = 0
        await self._settle(message, job, metadata, "sent", code, text, mail.message_id,
                           touched_server=True)
        await self._after_success()

    async def _done_already(self, message: AbstractIncomingMessage, job: SendJob,
                            row: Any) -> bool:
        """An unknown job goes to the dead letters; a copy of a job already done (a redelivery
        after a crash) is acked with its events again, same ids, and no second SMTP
        transaction. False: the job is still to be sent."""
        if row is None:
            await self._to_dead(message, "unknown_delivery", f"no recipient row for {job.job_id}")
            return True
        if row["state"] in ledger.SETTLED:
            await self._republish(job, row)
            await message.ack()
            return True
        return False

    async def _wait_for_turn(self) -> None:
        """Holds the account's lease and waits out the pause since its last send."""
        interval_s = self.interval_ms / 1000
        wait_s = self._paced_from + interval_s - time.monotonic()
        if self._lease_until - time.monotonic() - max(0.0, wait_s) >= LEASE_MARGIN_S:
            # Still ours since our last send: no other sender has sent since.
            await sleep_until(self._paced_from + interval_s)
            return
        owner = self._parts.settings.replica_id
        while True:
            asked = time.monotonic()
            wait_s = await ledger.take_lease(self._parts.pool, self.account_id, owner,
                                             self.interval_ms, self._parts.settings.lease_ttl_s)
            if wait_s is not None:
                break
            # Another replica sends for this account (a consumer hand-over in progress).
            await asyncio.sleep(min(1.0, max(0.05, await ledger.lease_left_s(
                self._parts.pool, self.account_id))))
        self._lease_until = asked + wait_s + self._parts.settings.lease_ttl_s
        # From now, not from the question: the wait was computed before the answer came.
        await sleep_until(time.monotonic() + wait_s)

    def _observe_pause(self, arrived: float) -> None:
        """The pause just kept, end of the last transaction to this one's start, when this
        message had to wait for it (otherwise the gap is the queue's idleness)."""
        pause_end = self._last_used + self.interval_ms / 1000
        if self._last_used and arrived < pause_end:
            overrun = time.monotonic() - pause_end
            if overrun < 0:
                metrics.PAUSE_SHORT.inc()
                log.error("pause shorter than the interval", short_by_ms=-overrun * 1e3)
            else:
                metrics.PAUSE_OVERRUN.observe(overrun)

    def _guard_lease(self) -> asyncio.TimerHandle:
        """Renews the lease if the send in hand outlasts it (a slow server)."""
        left = self._lease_until - time.monotonic() - LEASE_MARGIN_S
        return asyncio.get_running_loop().call_later(max(0.0, left), self._renew_lease)

    def _renew_lease(self) -> None:
        async def renew() -> None:
            asked = time.monotonic()
            ttl = self._parts.settings.lease_ttl_s
            if await ledger.extend_lease(self._parts.pool, self.account_id,
                                         self._parts.settings.replica_id, ttl):
                self._lease_until = asked + ttl
                metrics.LEASE_RENEWALS.inc()
            else:
                log.error("the account's lease was lost during a send")
        self._renewal = asyncio.create_task(renew())

    async def release_lease(self) -> None:
        """Gives back a lease still held (consumer cancelled, shutdown), so that another
        replica need not wait for it to run out."""
        if self._lease_until > time.monotonic():
            self._lease_until = 0.0
            await ledger.release_lease(self._parts.pool, self.account_id,
                                       self._parts.settings.replica_id, touched_server=False)

    # -- outcomes -------------------------------------------------------------------------

    async def _settle(self, message: AbstractIncomingMessage, job: SendJob, metadata: dict,
                      state: str, code: int | None, text: str, message_id: str | None, *,
                      touched_server: bool, stage: str = "data",
                      permanent: bool = True, unknown: bool = False) -> None:
        event: Event  # attempts is filled in by the ledger, which counts them
        if state == "sent":
            event = MailSent(
                event_id=stable_event_id(job.job_id, "sent"), delivery_id=job.delivery_id,
                metadata=metadata, account_id=self.account_id, recipient=job.email,
                message_id=message_id or "", smtp_code=code or 250, attempts=0)
        else:
            event = MailFailed(
                event_id=stable_event_id(job.job_id, state), delivery_id=job.delivery_id,
                metadata=metadata, account_id=self.account_id, recipient=job.email,
                stage=stage, smtp_code=code, smtp_message=text, permanent=permanent,
                attempts=0, outcome="unknown" if unknown else "failed")
        recorded = await self._record(job, state, code, text, message_id, touched_server, event)
        if recorded.applied:
            self._parts.wake_events()
        metrics.OUTCOMES.labels(self.account_id, state).inc()
        if touched_server:
            metrics.LAST_SEND.labels(self.account_id).set_to_current_time()
        await message.ack()
        log.info("recipient settled", outcome=state, smtp_code=code)

    async def _record(self, job: SendJob, state: str, code: int | None, text: str,
                      message_id: str | None, touched_server: bool,
                      event: Event | None) -> ledger.Recorded:
        # The lease is kept only while this worker still consumes: after a cancel or a pause
        # another replica may have the queue, and should not wait for it.
        keep = touched_server and self.consumer_tag is not None and not self.paused
        hold = timedelta(milliseconds=self.interval_ms,
                         seconds=self._parts.settings.lease_hold_s) if keep else None
        asked = time.monotonic()
        recorded = await ledger.record(
            self._parts.pool, delivery_id=job.delivery_id, index=job.index, state=state, code=code,
            message=text, message_id=message_id, account_id=self.account_id,
            owner=self._parts.settings.replica_id, touched_server=touched_server, hold=hold,
            event=None if event is None else event.model_dump(mode="json"),
            completed_id=stable_event_id(job.delivery_id, "completed"))
        metrics.RECORD_SECONDS.observe(time.monotonic() - asked)
        if touched_server:
            kept = recorded.lease_kept and hold is not None
            self._lease_until = asked + hold.total_seconds() if kept else 0.0
            self._paced_from = time.monotonic()
        return recorded

    @staticmethod
    def _completed(job: SendJob, metadata: dict, sent: int, failed: int,
                   total: int) -> DeliveryCompleted:
        # `failed` counts the unknown outcomes too: the contract's event has sent and failed.
        return DeliveryCompleted(
            event_id=stable_event_id(job.delivery_id, "completed"), delivery_id=job.delivery_id,
            metadata=metadata, sent=sent, failed=failed, total=total)

    async def _republish(self, job: SendJob, row: Any) -> None:
        state = row["state"]
        if state == "sent":
            await self._parts.events.publish(MailSent(
                event_id=stable_event_id(job.job_id, "sent"), delivery_id=job.delivery_id,
                metadata=row["metadata"], account_id=self.account_id, recipient=job.email,
                message_id=row["message_id"] or "", smtp_code=row["last_smtp_code"] or 250,
                attempts=row["attempts"]))
        if row["completed_at"] is not None:
            await self._parts.events.publish(self._completed(
                job, row["metadata"], row["sent"], row["failed"] + row["unknown"], row["total"]))
        log.info("job already settled; not sent again", outcome=state)

    async def _failed(self, message: AbstractIncomingMessage, job: SendJob, metadata: dict,
                      error: SmtpStageError, verdict: Verdict) -> None:
        log.info("smtp failure", stage=error.stage, smtp_code=error.code, kind=verdict.kind,
                 smtp_message=error.text)
        if verdict.kind is Kind.ACCOUNT_FAULT:
            await self._pause_for(message, job, error, verdict.pause_reason or "account")
            return
        if verdict.kind is Kind.PERMANENT:
            await self._settle(message, job, metadata, "failed", error.code, error.text, None,
                               touched_server=True, stage=verdict.event_stage)
            return
        if verdict.kind is Kind.UNKNOWN and not self._parts.settings.retry_unknown:
            await self._settle(message, job, metadata, "unknown", error.code,
                               f"no answer after the message was sent ({error.text}): it may "
                               "have been delivered", None, touched_server=True,
                               stage="data", permanent=False, unknown=True)
            return
        if verdict.kind is Kind.THROTTLED:
            await self._slow_down(error, verdict)
        age = datetime.now(UTC) - job.first_queued_at
        if age > timedelta(seconds=self._parts.settings.retry_max_age_s):
            await self._settle(message, job, metadata, "failed", error.code,
                               f"still failing after {age}: {error.text}", None,
                               touched_server=True, stage=verdict.event_stage, permanent=False)
            return
        await self._defer(message, job, metadata, error, verdict)
        if verdict.pause_reason == "connect":
            self._connect_failures += 1
            if self._connect_failures >= self._parts.settings.connect_failures_to_pause:
                await self._pause(error, "connect")

    async def _defer(self, message: AbstractIncomingMessage, job: SendJob, metadata: dict,
                     error: SmtpStageError, verdict: Verdict) -> None:
        recorded = await self._record(job, "deferred", error.code, error.text, None,
                                      touched_server=True, event=None)
        tiers = self._parts.topology.retry_delays_s
        delay = retry_delay(max(1, recorded.attempts), tiers)
        if verdict.retry_after_s:  # the server said when: the first tier that waits enough
            delay = next((tier for tier in tiers if tier >= verdict.retry_after_s), tiers[-1])
        exchange = await self._exchange(self._parts.topology.retry_name(delay))
        await publish(exchange, self.account_id, make_message(
            message.body, message_id=message.message_id or job.job_id,
            headers={**(message.headers or {}), "x-retry-delay-s": delay}, type_="mail.send"))
        await self._parts.events.publish(MailDeferred(
            event_id=stable_event_id(job.job_id, "deferred", recorded.attempts),
            delivery_id=job.delivery_id, metadata=metadata, account_id=self.account_id,
            recipient=job.email, smtp_code=error.code, smtp_message=error.text,
            attempts=recorded.attempts, retry_at=datetime.now(UTC) + timedelta(seconds=delay)))
        metrics.OUTCOMES.labels(self.account_id, "deferred").inc()
        await message.ack()

    async def _slow_down(self, error: SmtpStageError, verdict: Verdict) -> None:
        configured = self.account["send_interval_ms"]
        self.interval_ms = next_interval_ms(self.interval_ms, configured, verdict.retry_after_s,
                                            self._parts.settings.max_interval_ms)
        self._successes = 0
        await ledger.set_interval(self._parts.pool, self.account_id, self.interval_ms)
        if not self.throttled:
            self.throttled = True
            metrics.THROTTLED.inc()
        await self._parts.events.publish(AccountThrottled(
            account_id=self.account_id, smtp_code=error.code, smtp_message=error.text,
            interval_ms=self.interval_ms))
        log.warning("account throttled by its provider", interval_ms=self.interval_ms)

    async def _after_success(self) -> None:
        configured = self.account["send_interval_ms"]
        if self.interval_ms <= configured:
            return
        self._successes += 1
        slower = decayed_interval_ms(self.interval_ms, configured, self._successes)
        if slower != self.interval_ms:
            self.interval_ms = slower
            at_pace = slower <= configured
            await ledger.set_interval(self._parts.pool, self.account_id,
                                      None if at_pace else slower)
            if at_pace and self.throttled:
                self.throttled = False
                metrics.THROTTLED.dec()

    # -- a broken account -----------------------------------------------------------------

    async def _pause_for(self, message: AbstractIncomingMessage, job: SendJob,
                         error: SmtpStageError, reason: str) -> None:
        """The account is at fault: the job goes back to its queue untouched, the account
        stops. Not one recipient is failed for it."""
        self._lease_until = 0.0
        await ledger.release_lease(self._parts.pool, self.account_id,
                                   self._parts.settings.replica_id, touched_server=True)
        send = await self._exchange(self._parts.topology.send_exchange)
        await publish(send, self.account_id, make_message(
            message.body, message_id=message.message_id or job.job_id,
            headers=dict(message.headers or {}), type_="mail.send"))
        await self._pause(error, reason)  # the consumer is cancelled before the ack
        await message.ack()

    async def _pause(self, error: SmtpStageError, reason: str) -> None:
        self.paused = True
        await self.close_session()
        detail = f"{error.stage}: {error.code or ''} {error.text}".strip()
        await ledger.set_paused(self._parts.pool, self.account_id, reason, detail)
        await self._parts.events.publish(AccountPaused(
            account_id=self.account_id, reason=reason, smtp_code=error.code,
            smtp_message=error.text))
        log.warning("account paused", reason=reason, smtp_code=error.code,
                    smtp_message=error.text)
        await self._on_pause(self)

    async def resume(self, announce: bool = True) -> None:
        """Ends the sender's pause; `announce` is False when config_svc has already
        published `account.resumed` (an operator's resume)."""
        self.paused = False
        self._connect_failures = 0
        await ledger.set_paused(self._parts.pool, self.account_id, None, None)
        if announce:
            await self._parts.events.publish(AccountResumed(account_id=self.account_id))
        log.info("account resumed", account_id=self.account_id)

    async def probe(self) -> bool:
        """Can the server be reached and logged in to again? (For connection pauses.)"""
        session = SmtpSession(smtp_endpoint(self.account, self._parts.box),
                              ssl_context=self._parts.ssl_context,
                              timeout_s=self._parts.settings.smtp_timeout_s)
        try:
            await session.open()
        except SmtpStageError as error:
            log.info("probe failed", stage=error.stage, smtp_message=error.text)
            return False
        finally:
            await session.close()
        return True

    async def _exchange(self, name: str) -> AbstractExchange:
        """An exchange of the topology (declared at start) on the confirmed channel."""
        return await self._parts.publish_channel.get_exchange(name, ensure=False)

    async def _to_dead(self, message: AbstractIncomingMessage, reason: str, detail: str) -> None:
        dead = await self._exchange(self._parts.topology.dead_exchange)
        headers = {**(message.headers or {}), "x-reason": reason, "x-detail": detail,
                   "x-original-queue": self._parts.topology.account_queue(self.account_id)}
        await publish(dead, self.account_id, make_message(
            message.body, message_id=message.message_id or "", headers=headers))
        await message.ack()
        log.warning("job moved to the dead-letter queue", reason=reason, detail=detail)
