"""One account's pace: its lease, the pause between two sends, the lease renewed during a send.

The lease is taken with one UPDATE on the database clock and belongs to one worker (a token
of its own, not the replica's name), so two workers, of two replicas or of one, never send for
an account at once. After a send the outcome's transaction keeps the lease for the pause plus a
hold, so that back-to-back sends of a busy account need no round trip for it.

The pause runs from the end of the last transaction that reached the server (its 250, or the
failure), as the server saw it, and is slept on `time.monotonic` until its deadline, never
less. Another replica computes its wait from `last_end`, which the database stores at the
record's commit, after that end: it waits at least as long.
"""

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import structlog

from services.sender import metrics

log = structlog.get_logger(__name__)

# A held lease is used only with this much of it left after the pause; a send outlasting the
# lease's end less this renews it.
LEASE_MARGIN_S = 1.0


class QuotaReached(Exception):
    """A quota window of the account is full: no lease was taken."""

    def __init__(self, window: str, resumes_at: Any) -> None:
        super().__init__(f"the quota per {window} is reached until {resumes_at}")
        self.window = window
        self.resumes_at = resumes_at


class LeaseStore(Protocol):
    async def take(self, owner: str, interval_ms: int, ttl_s: float) -> Any:
        """The seconds to wait before sending (database clock), None: held by another, or
        an object with `window` and `resumes_at`: a quota window is full."""

    async def extend(self, owner: str, ttl_s: float) -> bool:
        """Keeps the lease `owner`'s for `ttl_s` more; False: it is not `owner`'s."""

    async def left_s(self) -> float:
        """How long the lease's current holder still has it."""

    async def release(self, owner: str, touched_server: bool) -> None:
        """Gives back `owner`'s lease (nobody else's)."""


class Clock:
    """time.monotonic and its sleeps; unit tests pass a fake."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def sleep_until(self, deadline: float) -> None:
        await sleep_until(deadline)


async def sleep_until(deadline: float) -> None:
    """Returns at `deadline` (time.monotonic) or after, never before. A loop's timers need
    not promise that (uvloop's, with millisecond steps on a clock read once per iteration,
    end up to ~0.7 ms early half the time), and a pause must never be short."""
    while (left := deadline - time.monotonic()) > 0:  # noqa: ASYNC110 - a deadline, not an event
        await asyncio.sleep(left)


class Pacer:
    def __init__(self, store: LeaseStore, owner: str, *, ttl_s: float,
                 clock: Clock | None = None) -> None:
        self.owner = owner
        self.interval_ms = 0
        self.counts_quotas = False  # every turn then asks the database (it counts the sends)
        self.not_before = 0.0  # a throttling provider's window: no send before this
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock or Clock()
        self.ended_at = 0.0  # end of the last transaction that reached the server
        self._lease_until = 0.0  # before it the lease is surely ours

    def ready_at(self) -> float:
        """When the pause after the last send ends, as far as this worker knows."""
        return max(self.ended_at + self.interval_ms / 1000, self.not_before)

    @property
    def holds_lease(self) -> bool:
        return self._lease_until > self._clock.now()

    async def turn(self) -> None:
        """Returns when this worker holds the account's lease and the pause is over."""
        pause_end = self.ready_at()
        if (not self.counts_quotas
                and self._lease_until - max(self._clock.now(), pause_end) >= LEASE_MARGIN_S):
            # Still ours since our last send: no other sender has sent since.
            await self._clock.sleep_until(pause_end)
            return
        while True:
            asked = self._clock.now()
            wait_s = await self._store.take(self.owner, self.interval_ms, self._ttl_s)
            if hasattr(wait_s, "resumes_at"):
                raise QuotaReached(wait_s.window, wait_s.resumes_at)
            if wait_s is not None:
                break
            # Another worker sends for this account (a consumer hand-over in progress).
            await self._clock.sleep(min(1.0, max(0.05, await self._store.left_s())))
        self._lease_until = asked + wait_s + self._ttl_s
        # From now, not from the question: the wait was computed before the answer came.
        await self._clock.sleep_until(max(self._clock.now() + wait_s, pause_end))

    def ended(self, at: float | None = None) -> None:
        """A transaction that reached the server ended (250, refusal, withdrawal): the next
        pause runs from here."""
        self.ended_at = max(self.ended_at, self._clock.now() if at is None else at)

    def kept(self, asked: float, hold_s: float | None) -> None:
        """The outcome's transaction (begun at `asked`) kept the lease for `hold_s`, or gave
        it back (None)."""
        self._lease_until = asked + hold_s if hold_s is not None else 0.0

    def observe(self, arrived: float) -> None:
        """The pause just kept, end of the last transaction to this one's start, when the
        message had to wait for it (otherwise the gap is the queue's idleness)."""
        pause_end = self.ended_at + self.interval_ms / 1000
        if self.ended_at and arrived < pause_end:
            overrun = self._clock.now() - pause_end
            if overrun < 0:
                metrics.PAUSE_SHORT.inc()
                log.error("pause shorter than the interval", short_by_ms=-overrun * 1e3)
            else:
                metrics.PAUSE_OVERRUN.observe(overrun)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Renews the lease, again and again, while the send in hand outlasts it (a slow
        server, a session opened anew)."""
        task = asyncio.create_task(self._keep_renewed())
        try:
            yield
        finally:
            task.cancel()

    async def _keep_renewed(self) -> None:
        while True:
            # Never a busy loop, even with a lease shorter than the margin.
            await self._clock.sleep(max(LEASE_MARGIN_S / 4, self._lease_until
                                        - self._clock.now() - LEASE_MARGIN_S))
            asked = self._clock.now()
            try:
                ours = await self._store.extend(self.owner, self._ttl_s)
            except Exception:
                log.exception("renewing the account's lease failed; trying again")
                continue
            if not ours:
                self._lease_until = 0.0
                log.error("the account's lease was lost during a send")
                return
            self._lease_until = asked + self._ttl_s
            metrics.LEASE_RENEWALS.inc()

    async def release(self) -> None:
        """Gives back a lease still held (consumer cancelled, shutdown), so that another
        worker need not wait for it to run out. Only between sends."""
        if self.holds_lease:
            self._lease_until = 0.0
            await self._store.release(self.owner, touched_server=False)

    def forget(self) -> None:
        """The lease was given back by other means (a pause's release)."""
        self._lease_until = 0.0
