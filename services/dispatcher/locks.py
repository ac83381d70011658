"""One dispatcher at a time per delivery id, whatever pooler is in front of PostgreSQL.

A transaction-level advisory lock, held by a transaction left open on a connection of its
own while the work runs on another one (a fan-out commits many transactions under one lock).
It needs no session state: behind PgBouncer in transaction mode the open transaction keeps
its server connection, and the lock goes when the transaction ends, or when the client, the
pooler or the server dies. The open transaction takes no snapshot between its statements and
writes nothing, so it holds back no vacuum.

Each holder needs a second connection for its work. A semaphore lets at most half the pool
hold locks, so that every holder finds a connection to work with: without it, a pool full of
holders waiting for a work connection would wait for ever.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg


class DeliveryLocks:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._holders = asyncio.Semaphore(max(1, pool.get_max_size() // 2))

    @asynccontextmanager
    async def hold(self, delivery_id: str) -> AsyncIterator[asyncpg.Connection]:
        """The delivery's lock, and a connection to work with under it: a copy of the same
        request handled at once by two consumers waits, then finds it accepted."""
        async with (self._holders, self._pool.acquire() as holder, holder.transaction()):
            await holder.execute("SELECT pg_advisory_xact_lock(hashtext($1))", delivery_id)
            async with self._pool.acquire() as db:
                yield db
