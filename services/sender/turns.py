"""Which job of an account goes next: one at a time, and an urgent one before a normal one.

A worker holds at most one job of each of its account's two queues (prefetch 1 each). The
next turn is given when the account's pause ends, not when the last send ends: a normal job
that arrived first still waits through the pause, and an urgent job that arrives meanwhile
takes the turn from it. The pause itself is still kept by the pacer, whoever goes.
"""

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class Turns:
    def __init__(self, ready_at: Callable[[], float]) -> None:
        self._ready_at = ready_at  # time.monotonic when the account's pause ends
        self._held = False
        self._waiting: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting_urgent(self) -> bool:
        return any(rank == 0 for rank, _ in self._waiting)

    @asynccontextmanager
    async def turn(self, urgent: bool) -> AsyncIterator[None]:
        key = (0 if urgent else 1, next(self._order))
        future = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        self._next()
        try:
            await future
        except BaseException:
            self._waiting.pop(key, None)
            if future.done() and not future.cancelled():
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
        key = min(self._waiting)
        self._held = True
        self._waiting.pop(key).set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        self._next()
