"""An in-process accounts API on the real PostgreSQL and RabbitMQ of the test stack."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import jwt
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from services.config_svc.accounts import AccountService, TestMailConfig
from services.config_svc.api import create_app
from services.config_svc.main import MIGRATIONS, SERVICE
from services.config_svc.queues import AccountQueues
from shared.auth import ADMIN_ROLE, TokenVerifier, issue_token
from shared.crypto import SecretBox
from shared.db import migrate
from shared.http import Health
from shared.outbox import OutboxRelay
from shared.smtp import client_ssl_context
from shared.topology import Topology, open_confirmed_channel, open_transaction_channel

JWT_SECRET = "test-jwt-secret-0123456789abcdef"
# Fixed keys, so that rows left by an earlier run on a kept database stay readable.
KEY = "Zm9yLXRlc3RzLW9ubHktbm90LWEtcmVhbC1rZXkhISE="
NEXT_KEY = "YW5vdGhlci10ZXN0LWtleS1ub3QtZm9yLXByb2QhISE="
# One prefix for the whole run: the outbox is one table, drained by whichever relay runs.
TOPOLOGY = Topology(prefix="cfg" + uuid.uuid4().hex[:8])


def token(sub: str, admin: bool = False, ttl: int = 600) -> str:
    return issue_token(JWT_SECRET, sub, [ADMIN_ROLE] if admin else [], ttl)


def auth(sub: str = "admin", admin: bool = True) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, admin)}"}


def expired_token() -> str:
    past = int(time.time()) - 3600
    return jwt.encode({"sub": "admin", "roles": [ADMIN_ROLE], "exp": past}, JWT_SECRET,
                      algorithm="HS256")


def account_body(**changes: object) -> dict:
    body = {
        "name": f"Shop {uuid.uuid4().hex[:8]}",
        "from_address": "news@shop.example.com",
        "from_name": "ショップ",
        "smtp_host": "smtp.example.com",
        "smtp_port": 587,
        "smtp_auth": True,
        "smtp_username": "news@shop.example.com",
        "smtp_password": "s3cret-pw",
        "tls": "starttls",
        "send_interval_ms": 6000,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


@dataclass
class AccountsApi:
    client: httpx.AsyncClient
    pool: asyncpg.Pool
    channel: AbstractChannel
    relay: OutboxRelay
    relay_task: asyncio.Task
    box: SecretBox
    service: AccountService

    async def create(self, **changes: object) -> dict:
        response = await self.client.post("/v1/accounts", json=account_body(**changes),
                                          headers=auth())
        assert response.status_code == 201, response.text
        return response.json()


async def start_relay(pool: asyncpg.Pool, connection: AbstractRobustConnection) -> tuple[
        OutboxRelay, asyncio.Task]:
    relay = OutboxRelay(pool, await open_transaction_channel(connection), TOPOLOGY,
                        table="account_outbox", poll_s=0.2)
    return relay, asyncio.create_task(relay.run())


async def stop_relay(relay: OutboxRelay, task: asyncio.Task) -> None:
    relay.stop()
    async with asyncio.timeout(10):
        await task


@pytest.fixture
async def accounts_api(pool: asyncpg.Pool,
                       amqp: AbstractRobustConnection) -> AsyncIterator[AccountsApi]:
    async with pool.acquire() as db:
        await migrate(db, SERVICE, MIGRATIONS)
    channel = await open_confirmed_channel(amqp)
    await TOPOLOGY.declare(channel)
    relay, task = await start_relay(pool, amqp)
    box = SecretBox([KEY])
    service = AccountService(
        pool, box, AccountQueues(channel, TOPOLOGY), relay.wake,
        TestMailConfig(client_ssl_context(), timeout_s=5),
    )
    app = create_app(service, TokenVerifier("HS256", JWT_SECRET), Health(), 65536)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://config") as client:
        api = AccountsApi(client, pool, channel, relay, task, box, service)
        yield api
    await stop_relay(api.relay, api.relay_task)
    await channel.close()


async def events_queue(channel: AbstractChannel) -> AbstractQueue:
    """A private queue that receives every account event of the run."""
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(TOPOLOGY.events_exchange, routing_key="account.#")
    return queue


async def collect_events(queue: AbstractQueue, account_id: str, want: int,
                         timeout: float = 10) -> list[dict]:
    """The events about `account_id`, waiting until `want` arrived (and a little longer for
    duplicates, which would be a failure)."""
    found: list[dict] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        message = await queue.get(fail=False, no_ack=True)
        if message is None:
            if len(found) >= want:
                break
            await asyncio.sleep(0.05)
            continue
        event = orjson.loads(message.body)
        if event.get("account_id") == account_id:
            found.append(event)
    return found
