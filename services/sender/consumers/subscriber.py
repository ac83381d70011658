"""Subscribing accounts: the account's worker made or brought up to date, its two queues
consumed, several accounts at once."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from services.sender import store

log = structlog.get_logger(__name__)

SUBSCRIBE_AT_ONCE = 32  # accounts being subscribed at the same time


class Subscriber:
    def __init__(self, pool: Any, consumers: Any, workers: dict[str, Any],
                 worker_for: Callable[[Any], Awaitable[Any]]) -> None:
        self._pool = pool
        self._consumers = consumers
        self._workers = workers  # the supervisor's, read only
        self._worker_for = worker_for

    async def subscribe_all(self, account_ids: list[str]) -> int:
        """Subscribes these accounts, several at once (each one's commands wait for the
        broker's replies; spread over channels they overlap); returns how many failed."""
        limit = asyncio.Semaphore(SUBSCRIBE_AT_ONCE)
        gate = asyncio.Event() if len(account_ids) > SUBSCRIBE_AT_ONCE else None

        async def one(account_id: str) -> int:
            async with limit:
                try:
                    await self.subscribe(account_id, gate)
                except Exception:
                    log.exception("subscribing failed", account_id=account_id)
                    return 1
                return 0

        try:
            return sum(await asyncio.gather(*(one(account_id) for account_id in account_ids)))
        finally:
            if gate is not None:
                gate.set()

    async def subscribe(self, account_id: str, gate: asyncio.Event | None = None) -> None:
        account = await store.account(self._pool, account_id)
        if account is None:
            return
        await store.ensure_runtime(self._pool, account_id)
        worker = self._workers.get(account_id)
        if worker is None:
            worker = await self._worker_for(account)
        else:
            await worker.update(account)
        worker.subscribing(gate)
        try:
            worker.subscribed(*await self._consumers.consume(account_id, worker.on_message))
        except BaseException:
            worker.lost()
            raise
        log.info("consuming", account_id=account_id)
