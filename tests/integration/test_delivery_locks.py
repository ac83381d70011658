"""The delivery locks (services/dispatcher/locks.py), on PostgreSQL itself here and behind
PgBouncer in transaction mode in test_pgbouncer.py."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.dispatcher.locks import DeliveryLocks
from shared.db import Pooling, create_pool
from tests.conftest import required_env


@pytest.fixture
async def direct() -> AsyncIterator[asyncpg.Connection]:
    """PostgreSQL itself, to see what the pooler hides (the locks held)."""
    connection = await asyncpg.connect(required_env("MAIL_POSTGRES_DSN"))
    yield connection
    await connection.close()


async def advisory_locks(direct: asyncpg.Connection, keys: list[str]) -> int:
    return await direct.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND objid::int = ANY(SELECT hashtext(k) FROM unnest($1::text[]) AS k)", keys)


async def test_a_delivery_lock_excludes_and_is_gone_after(
    pool: asyncpg.Pool, direct: asyncpg.Connection,
) -> None:
    """Behind a transaction pooler, a session lock would be taken on one server connection
    and released on another (or never): two holders of the same delivery would then
    overlap, and the lock stay."""
    locks = DeliveryLocks(pool)
    keys = [f"crm-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    inside = dict.fromkeys(keys, 0)
    overlaps: list[str] = []

    async def work(key: str) -> None:
        async with locks.hold(key) as db:
            inside[key] += 1
            if inside[key] > 1:
                overlaps.append(key)
            # Queries of the holder's work, each a transaction of its own for the pooler.
            for _ in range(3):
                await db.fetchval("SELECT count(*) FROM pg_stat_activity")
            inside[key] -= 1

    await asyncio.gather(*(work(keys[i % 3]) for i in range(30)))
    assert overlaps == []
    assert await advisory_locks(direct, keys) == 0


async def test_a_holder_whose_client_dies_lets_the_next_one_in(
    postgres_dsn: str, db_pooling: Pooling, direct: asyncpg.Connection,
) -> None:
    first = await create_pool(postgres_dsn, max_size=2, pooling=db_pooling)
    second = await create_pool(postgres_dsn, max_size=2, pooling=db_pooling)
    key = f"crm-{uuid.uuid4().hex[:8]}"
    held = asyncio.Event()

    async def hold_for_ever() -> None:
        async with DeliveryLocks(first).hold(key):
            held.set()
            await asyncio.Event().wait()

    holding = asyncio.create_task(hold_for_ever())
    try:
        await asyncio.wait_for(held.wait(), 10)
        assert await advisory_locks(direct, [key]) == 1
        first.terminate()  # the process dies: its connections to the pooler drop
        async with asyncio.timeout(10), DeliveryLocks(second).hold(key) as db:
            assert await db.fetchval("SELECT 1") == 1
    finally:
        holding.cancel()
        await second.close()


async def test_a_holder_whose_server_connection_is_killed_fails_its_work_and_frees_the_lock(
    pool: asyncpg.Pool, direct: asyncpg.Connection,
) -> None:
    """The lock is lost with its server connection while the work goes on: the holder's
    end raises, so that the request is handled again, never taken for done."""
    locks = DeliveryLocks(pool)
    key = f"crm-{uuid.uuid4().hex[:8]}"
    # asyncpg says InternalClientError when the server's goodbye came while it was idle.
    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                        asyncpg.InternalClientError, ConnectionError)):
        async with locks.hold(key) as db:
            killed = await direct.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND objid::int = hashtext($1)", key)
            assert killed
            assert await db.fetchval("SELECT 1") == 1  # the work's own connection lives
    assert await advisory_locks(direct, [key]) == 0
    async with asyncio.timeout(10), locks.hold(key) as db:  # and the next one gets it
        assert await db.fetchval("SELECT 1") == 1
