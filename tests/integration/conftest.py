import asyncio
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from yarl import URL

from shared.db import Pooling, create_pool
from tests.conftest import required_env
from tests.integration.accounts_fixtures import accounts_api  # noqa: F401 - a fixture
from tests.integration.dispatcher_fixtures import dispatcher  # noqa: F401 - a fixture
from tests.integration.sender_fixtures import (  # noqa: F401 - fixtures
    sender_overrides,
    start_sender,
)


@pytest.fixture
def amqp_url() -> str:
    return required_env("MAIL_AMQP_URL")


@pytest.fixture
def postgres_dsn() -> str:
    return required_env("MAIL_POSTGRES_DSN")


@pytest.fixture
def stack_dir() -> str:
    return required_env("MAIL_STACK_DIR")


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(amqp_url, timeout=10)
    yield connection
    await connection.close()


@pytest.fixture
def db_pooling() -> Pooling:
    """What is between the tests and PostgreSQL (test_pgbouncer.py puts PgBouncer there)."""
    return "session"


@pytest.fixture
async def pool(postgres_dsn: str, db_pooling: Pooling) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(postgres_dsn, max_size=5, pooling=db_pooling)
    yield pool
    await pool.close()


@pytest.fixture
async def management(amqp_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The RabbitMQ management API, logged in as the project's user."""
    url = URL(amqp_url)
    base = required_env("MAIL_RABBITMQ_MANAGEMENT_URL").rstrip("/") + "/api"
    async with httpx.AsyncClient(
        base_url=base, auth=(url.user or "", url.password or ""), timeout=10
    ) as client:
        yield client


@pytest.fixture(autouse=True)
async def settled_loop() -> AsyncIterator[None]:
    """Lets the callbacks a test's closed connections scheduled run before the loop closes.

    aio-pika runs a robust connection's close callback as a task of its own; a test that
    ends just after a close could leave it pending, and the loop's end would destroy it
    (an unraisable warning, an error under `filterwarnings = error`, in the next test)."""
    yield
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    if pending:
        await asyncio.wait(pending, timeout=2)
