"""What ends a pause by itself: a probe of an account paused for connection failures (its
server reached and logged in to again), and the end of a quota pause."""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from services.sender import store

log = structlog.get_logger(__name__)


class Timers:
    def __init__(self, pool: Any, settings: Any,
                 worker_for: Callable[[Any], Awaitable[Any]],
                 reconcile: Callable[[str], Awaitable[None]]) -> None:
        self._pool = pool
        self._settings = settings
        self._worker_for = worker_for  # the account's worker, made when it has none
        self._reconcile = reconcile  # of one account, once its pause ended
        self._tasks: dict[str, asyncio.Task] = {}
        self.stopping = False

    def follow(self, row: Any) -> None:
        """A live account's row: a timer started if its pause ends by itself."""
        account_id = str(row["id"])
        if row["paused_reason"] == "connect":
            self._start(account_id, self._probe_loop(account_id))
        elif row["paused_reason"] == "quota":
            self._start(account_id, self._resume_at(account_id, row["resumes_at"]))

    def _start(self, account_id: str, work: Any) -> None:
        if account_id in self._tasks or self.stopping:
            work.close()
            return
        self._tasks[account_id] = asyncio.create_task(work)

    def stop(self, account_id: str) -> None:
        task = self._tasks.pop(account_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def cancel_all(self) -> None:
        self.stopping = True
        for task in self._tasks.values():
            task.cancel()

    async def _resume_at(self, account_id: str, resumes_at: Any) -> None:
        """A quota pause ends when the quota is likely back; the next send tells (another
        quota reply pauses it again, for twice as long)."""
        try:
            if resumes_at is not None:
                await asyncio.sleep(max(0.0, (resumes_at - datetime.now(UTC)).total_seconds()))
            account = await store.account(self._pool, account_id)
            if account is None or account["paused_reason"] != "quota":
                return
            worker = await self._worker_for(account)
            await worker.resume()
            log.info("quota pause over", account_id=account_id)
            await self._reconcile(account_id)
        finally:
            self._tasks.pop(account_id, None)

    async def _probe_loop(self, account_id: str) -> None:
        wait = self._settings.probe_min_s
        try:
            while True:
                await asyncio.sleep(wait)
                account = await store.account(self._pool, account_id)
                if account is None or account["paused_reason"] != "connect":
                    return
                worker = await self._worker_for(account)
                if await worker.probe():
                    await worker.resume()
                    await self._reconcile(account_id)
                    return
                wait = min(wait * 2, self._settings.probe_max_s)
        finally:
            self._tasks.pop(account_id, None)
