"""Which job of an account goes next: one at a time, and an urgent one before a normal one.

A worker holds at most one job of each of its account's two queues (prefetch 1 each). The
next turn is given when the account's pause ends, not when the last send ends: a normal job
that arrived first still waits through the pause, and an urgent job that arrives meanwhile
takes the turn from it. The pause itself is still kept by the pacer, whoever goes.

A normal job passed over for `promote_after_s` goes next, whatever waits: a long urgent
delivery never holds a normal job in hand past the broker's consumer timeout.
"""

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

PROMOTE_AFTER_S = 300.0


class Interrupted(Exception):
    """The worker stopped consuming: the jobs waiting for a turn go back to the broker."""


class Turns:
    def __init__(self, ready_at: Callable[[], float],
                 promote_after_s: float = PROMOTE_AFTER_S) -> None:
        self._ready_at = ready_at  # time.monotonic when the account's pause ends
        self._promote_after_s = promote_after_s
        self._held = False
        # (urgent first, arrival order) -> (arrived at, its future)
        self._waiting: dict[tuple[int, int], tuple[float, asyncio.Future[None]]] = {}
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def interrupt(self) -> None:
        """Every job waiting for a turn gives up (`Interrupted`); the one sending goes on."""
        waiting, self._waiting = self._waiting, {}
        for _arrived, future in waiting.values():
            if not future.done():
                future.set_exception(Interrupted())

    @asynccontextmanager
    async def turn(self, urgent: bool) -> AsyncIterator[None]:
        key = (0 if urgent else 1, next(self._order))
        future = asyncio.get_running_loop().create_future()
        self._waiting[key] = (time.monotonic(), future)
        self._next()
        try:
            await future
        except BaseException:
            self._waiting.pop(key, None)
            if future.done() and not future.cancelled() and future.exception() is None:
                self._release()  # given the turn just as it was cancelled: pass it on
            else:
                self._next()
            raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._held = False
        self._next()

    def _next(self) -> None:
        if self._held or not self._waiting:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        wait_s = self._ready_at() - time.monotonic()
        if wait_s > 0:
            self._timer = asyncio.get_running_loop().call_later(wait_s, self._on_timer)
            return
        now = time.monotonic()
        overdue = [key for key, (arrived, _) in self._waiting.items()
                   if key[0] == 1 and now - arrived >= self._promote_after_s]
        key = min(overdue, key=lambda k: k[1]) if overdue else min(self._waiting)
        self._held = True
        self._waiting.pop(key)[1].set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        self._next()
