"""An in-process dispatcher on the real broker and database, with a topology of its own."""

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection
from yarl import URL

from services.config_svc.main import MIGRATIONS as ACCOUNTS_MIGRATIONS
from services.dispatcher.api import create_app
from services.dispatcher.cancel import CancelIntake, Canceller
from services.dispatcher.consumer import RequestConsumer
from services.dispatcher.fanout import FanOut
from services.dispatcher.intake import DeadLetters, Intake
from services.dispatcher.locks import DeliveryLocks
from services.dispatcher.main import MIGRATIONS
from services.dispatcher.schedule import Schedule
from shared.auth import TokenVerifier
from shared.db import Pooling, migrate
from shared.db import connect as db_connect
from shared.http import Health
from shared.messages import DeliveryRequest
from shared.topology import (
    EventPublisher,
    Topology,
    make_message,
    open_confirmed_channel,
    publish,
)
from tests.integration.accounts_fixtures import JWT_SECRET


async def migrate_all(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as db:
        await migrate(db, "config_svc", ACCOUNTS_MIGRATIONS)
        await migrate(db, "dispatcher", MIGRATIONS)


async def insert_account(pool: asyncpg.Pool, *, personal: bool = False,
                         owner: str | None = None) -> str:
    return str(await pool.fetchval(
        "INSERT INTO accounts (name, personal, owner, from_address, smtp_host, smtp_port, "
        "tls, created_by) VALUES ($1, $2, $3, 'news@shop.example.com', '127.0.0.1', 25, "
        "'none', 'tests') RETURNING id",
        f"dispatcher test {uuid.uuid4().hex[:8]}", personal, owner))


def request_body(**changes: object) -> dict:
    body = {
        "delivery_id": f"crm-{uuid.uuid4().hex[:12]}",
        "requested_by": "tanaka",
        "subject": "{{name}} 様 11月のお知らせ",
        "text": "{{name}} 様, plan {{plan}}",
        "html": "<p>{{name}} 様</p>",
        "recipients": [
            {"email": "a@example.com", "name": "山田 太郎", "vars": {"plan": "gold"}},
            {"email": "b@example.com", "name": "鈴木 花子", "vars": {"plan": "silver"}},
        ],
        "headers": {"X-Campaign": "2026-11"},
        "metadata": {"crm_delivery": 123},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


@dataclass
class Dispatcher:
    pool: asyncpg.Pool
    channel: AbstractChannel
    topology: Topology
    account_id: str
    events: AbstractQueue
    dead: AbstractQueue
    consumer: RequestConsumer
    canceller: Canceller
    schedule: Schedule
    fanout: FanOut
    scheduling: asyncio.Task
    connect: Any  # a connection of its own, for a schedule
    locks: DeliveryLocks
    amqp_user: str = "mail"

    def new_schedule(self) -> Schedule:
        return Schedule(self.pool, self.locks, self.connect, self.fanout, self.canceller,
                        poll_s=0.2)

    async def stop_schedule(self) -> None:
        await self.schedule.stopped(self.scheduling, 10)

    async def publish_bytes(self, body: bytes, message_id: str = "") -> None:
        exchange = await self.channel.get_exchange(self.topology.requests_exchange)
        await publish(exchange, "delivery.request", make_message(body, message_id=message_id))

    async def publish_request(self, body: dict) -> None:
        await self.publish_bytes(orjson.dumps(body), body.get("delivery_id", ""))

    async def next_event(self, timeout: float = 10) -> dict:
        async with self.events.iterator() as messages, asyncio.timeout(timeout):
            async for message in messages:
                await message.ack()
                return orjson.loads(message.body)
        raise AssertionError("unreachable")

    async def publish_cancel(self, delivery_id: str, requested_by: str | None) -> None:
        exchange = await self.channel.get_exchange(self.topology.requests_exchange)
        await publish(exchange, "delivery.cancel", make_message(
            orjson.dumps({"delivery_id": delivery_id, "requested_by": requested_by}),
            message_id=f"cancel:{delivery_id}"))

    def app(self) -> Any:
        """The dispatcher's HTTP API, publishing into this test's topology."""
        async def publish_request(request: DeliveryRequest, ignore_suppressions: bool) -> None:
            exchange = await self.channel.get_exchange(self.topology.requests_exchange)
            message = make_message(
                request.model_dump_json(exclude_none=True).encode(),
                message_id=request.delivery_id,
                headers={"x-ignore-suppressions": "true"} if ignore_suppressions else None)
            message.user_id = self.amqp_user
            await publish(exchange, "delivery.request", message)

        return create_app(self.pool, self.locks, TokenVerifier("HS256", JWT_SECRET), Health(),
                          self.canceller, publish_request, max_request_bytes=64 * 1024,
                          wake_schedule=self.schedule.wake)

    def http(self) -> httpx.AsyncClient:
        """The dispatcher's HTTP API, in process."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app()),
                                 base_url="http://dispatcher")

    def account_queue(self) -> str:
        return self.topology.account_queue(self.account_id)


@pytest.fixture
async def dispatcher(pool: asyncpg.Pool, amqp: AbstractRobustConnection, unique: str,
                     postgres_dsn: str, amqp_url: str,
                     db_pooling: Pooling) -> AsyncIterator[Dispatcher]:
    await migrate_all(pool)
    # Short retry delays, so that the sender's tests see retries come back.
    topology = Topology(prefix=unique, retry_delays_s=(1, 2))
    channel = await open_confirmed_channel(amqp)
    await topology.declare(channel)
    account_id = await insert_account(pool)
    await topology.declare_account_queue(channel, account_id)
    events = await channel.declare_queue(exclusive=True)
    await events.bind(topology.events_exchange, routing_key="delivery.*")
    dead = await channel.get_queue(topology.dead_queue)

    fanout = await FanOut.open(amqp, topology, window=100)
    publisher, letters = EventPublisher(channel, topology), DeadLetters(channel, topology)
    locks = DeliveryLocks(pool)
    intake = Intake(locks, fanout, publisher, letters, max_bytes=32 * 1024 * 1024)
    canceller = Canceller(pool, publisher)
    consuming = await amqp.channel()
    await consuming.set_qos(prefetch_count=4)
    amqp_user = URL(amqp_url).user or "guest"
    consumer = RequestConsumer(await consuming.get_queue(topology.requests_queue), intake,
                               CancelIntake(canceller, letters), frozenset({amqp_user}))
    await consumer.start()
    connect = functools.partial(db_connect, postgres_dsn, db_pooling)
    schedule = Schedule(pool, locks, connect, fanout, canceller, poll_s=0.2, announce_after_s=0.5)
    scheduling = asyncio.create_task(schedule.run())
    stack = Dispatcher(pool, channel, topology, account_id, events, dead, consumer, canceller,
                       schedule, fanout, scheduling, connect, locks, amqp_user)
    yield stack
    await stack.stop_schedule()
    await consumer.stop(10)
    await consuming.close()
    await channel.close()
