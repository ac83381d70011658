"""The send path's database, as `delivery.ports.SendStore` names it, over the pool."""

from datetime import datetime
from typing import Any

import asyncpg

from services.sender.delivery.compose import DeliveryContent
from services.sender.store import accounts, leases, outbox, recipients


class PoolStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def recipient(self, delivery_id: str, index: int) -> asyncpg.Record | None:
        return await recipients.recipient(self._pool, delivery_id, index)

    async def hold(self, delivery_id: str, index: int) -> bool:
        return await recipients.hold(self._pool, delivery_id, index)

    async def content(self, delivery_id: str, account: Any) -> tuple[DeliveryContent, dict]:
        return await recipients.content(self._pool, delivery_id, account)

    async def record(self, **outcome: Any) -> recipients.Recorded:
        return await recipients.record(self._pool, **outcome)

    async def mark_end(self, account_id: str) -> None:
        await leases.mark_end(self._pool, account_id)

    async def release_lease(self, account_id: str, owner: str, touched_server: bool) -> None:
        await leases.release_lease(self._pool, account_id, owner, touched_server)

    async def set_paused(self, account_id: str, reason: str | None, detail: str | None,
                         event: dict[str, Any] | None = None,
                         resumes_at: datetime | None = None) -> bool:
        return await accounts.set_paused(self._pool, account_id, reason, detail, event,
                                         resumes_at)

    async def set_interval(self, account_id: str, interval_ms: int | None,
                           event: dict[str, Any] | None = None) -> None:
        await accounts.set_interval(self._pool, account_id, interval_ms, event)

    async def add_events(self, events: list[dict[str, Any]]) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            for event in events:
                await outbox.add_event(connection, event)

    def lease(self, account_id: str) -> leases.AccountLease:
        return leases.AccountLease(self._pool, account_id)



