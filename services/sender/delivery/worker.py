"""One account in this replica: its settings, its SMTP session, its pace, its pause, and the
consumer's edge and handler of its jobs.

The send path runs one way: edge (decode; at the end ack, give back, put on a queue, retry or
dead-letter: the only code that touches the AMQP message) -> handler (prepare, wait for the
turn and the quota, send, on failure or on success) -> classify (pure) -> outcome (pure: the
action) -> recorder (ledger and outbox, retried in place) -> edge again.

The supervisor talks to a worker through a narrow interface: `subscribing` / `subscribed` /
`unsubscribed` / `lost` around its consumer, `update` and `resume`; a worker tells the
supervisor of its own pause through `Listener.paused`.
"""

import asyncio
import secrets
from typing import Any, Protocol

import structlog

from services.sender.delivery import events
from services.sender.delivery.compose import account_address_problem
from services.sender.delivery.edge import Edge
from services.sender.delivery.handler import JobHandler
from services.sender.delivery.pace import Pace
from services.sender.delivery.pacer import Pacer
from services.sender.delivery.ports import Session
from services.sender.delivery.recorder import Recorder
from services.sender.delivery.turns import Turns
from services.sender.store.leases import Quotas
from shared.crypto import UndecryptableSecret
from shared.smtp import SmtpStageError

log = structlog.get_logger(__name__)


class Listener(Protocol):
    async def paused(self, worker: "AccountWorker") -> None:
        """The worker paused its account (stored already): stop consuming it."""


class AccountWorker:
    def __init__(self, account: Any, parts: Any, listener: Listener) -> None:
        self.account_id = str(account["id"])
        self._parts = parts
        self._listener = listener
        # The lease is this worker's, not the replica's: two workers never send at once.
        self.token = f"{parts.settings.replica_id}/{secrets.token_hex(4)}"
        self._lease = parts.store.lease(self.account_id)
        self.pacer = Pacer(self._lease, self.token, ttl_s=parts.settings.lease_ttl_s,
                           clock=parts.clock)
        self.turns = Turns(self.pacer.ready_at)  # an urgent job first, when the pause ends
        self.recorder = Recorder(parts.store, self.account_id, self.token, parts.database,
                                 parts.wake_events)
        self.pace = Pace(parts.store, self.account_id, self.pacer, parts.wake_events)
        self._follow(account)
        self._session: Session | None = None
        self._session_stale = False  # the account changed during a send: reopen after it
        self.paused = False  # by this worker; it takes no message until resumed
        self.consuming = False  # between the supervisor's `subscribing` and `unsubscribed`
        # Jobs wait on it while a batch of accounts is subscribed.
        self.gate: asyncio.Event | None = None
        self.queue: Any | None = None
        self.consumer_tag: str | None = None
        self.busy = asyncio.Lock()
        self.handler = JobHandler(self, parts)
        self.edge = Edge(self.handler, parts.topology, parts.publish_channel, self.account_id)

    @property
    def interval_ms(self) -> int:
        return self.pacer.interval_ms

    @property
    def quotas(self) -> Quotas:
        return self._lease.quotas

    @property
    def running(self) -> bool:
        """Takes jobs: consumed here and not paused."""
        return self.consuming and not self.paused

    @property
    def throttled(self) -> bool:
        return self.pace.throttled

    @property
    def delivered(self) -> bool:
        """A job came since the consumer was made (the active consumer of its queues)."""
        return self.edge.delivered

    @property
    def on_message(self) -> Any:
        return self.edge.on_message

    def standing_in(self, home: Any) -> Any:
        """The consumer of a paused account's queues while this account stands in for it:
        its jobs go out through this account's server, pace and quotas, with its From."""
        return self.edge.standing_in(home)

    # -- the supervisor's side ------------------------------------------------------------

    def subscribing(self, gate: asyncio.Event | None) -> None:
        # Wanted means running in the table: a pause another replica ended is over here too
        # (a worker left paused would put back every job it is given, round and round).
        self.paused = False
        self.consuming = True
        self.gate = gate
        self.edge.delivered = False

    def subscribed(self, queue: Any, consumer_tag: str) -> None:
        self.queue, self.consumer_tag = queue, consumer_tag

    def unsubscribed(self) -> None:
        """The consumer was cancelled: the jobs waiting for a turn go back to the broker at
        once (another replica, or a standby, may take them), not when their turn comes."""
        self.lost()
        self.turns.interrupt()

    def lost(self) -> None:
        """The consumer is gone (its channel, its connection, or a failed subscription)."""
        self.consumer_tag = None
        self.consuming = False

    def retire(self) -> None:
        self.pace.forget()

    # -- account changes ------------------------------------------------------------------

    def _follow(self, account: Any) -> None:
        """What the account's settings decide: its pace, its quotas, whether its From can
        be written."""
        self.account = account
        self.pacer.interval_ms = self._effective_interval(account)
        self.pace.configured_ms = account["send_interval_ms"]
        self._lease.quotas = Quotas.of(account)
        self.pacer.counts_quotas = bool(self._lease.quotas)
        self.address_problem = account_address_problem(account["from_address"],
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

    # -- the SMTP session -----------------------------------------------------------------

    async def close_session(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def close_if_idle(self, now: float) -> None:
        if (self._session is not None and not self.busy.locked()
                and now - self.pacer.ended_at > self._parts.settings.smtp_idle_close_s):
            async with self.busy:
                await self.close_session()

    async def session_for_send(self) -> Session:
        """Raises UndecryptableSecret when the account's password cannot be read."""
        if self._session_stale:
            self._session_stale = False
            await self.close_session()
        if self._session is None:
            self._session = self._parts.sessions(self.account, False)
        return self._session

    async def drop_session(self) -> None:
        """After an unexpected error the session's state is not known: start afresh."""
        try:
            await self.close_session()
        except Exception:
            log.exception("closing the SMTP session failed")

    # -- a broken account -----------------------------------------------------------------

    async def pause(self, reason: str, code: int | None, text: str,
                    stage: str | None = None, *, resumes_at: Any = None,
                    window: str | None = None) -> None:
        """Stops the account: the pause is stored first (retried until it is, its event in
        the outbox beside it), then the consumer is cancelled; an account change, an
        operator, a successful probe or, for a quota, `resumes_at` ends it."""
        detail = f"{stage}: {code or ''} {text}".strip() if stage else text
        event = events.paused(self.account_id, reason=reason, code=code, text=text,
                              resumes_at=resumes_at, window=window)
        await self.recorder.set_paused(reason, detail, event, resumes_at)
        self.paused = True
        await self.close_session()
        log.warning("account paused", reason=reason, smtp_code=code, smtp_message=text)
        await self._listener.paused(self)

    async def resume(self, announce: bool = True) -> None:
        """Ends the sender's pause; `announce` is False when config_svc has already
        published `account.resumed` (an operator's resume). Announced once, whichever
        replica resumes first."""
        event = events.resumed(self.account_id) if announce else None
        await self._parts.store.set_paused(self.account_id, None, None, event)
        self._parts.wake_events()
        self.handler.outcomes.connect_failures = 0
        self.paused = False
        log.info("account resumed")

    async def probe(self) -> bool:
        """Can the server be reached and logged in to again? (For connection pauses.)"""
        try:
            session = self._parts.sessions(self.account, True)
        except UndecryptableSecret:
            log.warning("probe impossible: the account's password cannot be decrypted")
            return False
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
