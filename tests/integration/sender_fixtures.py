"""An in-process sender (the real supervisor and workers) beside the in-process dispatcher."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection

from services.sender.bounces.verp import Verp
from services.sender.consumers.supervisor import Supervisor
from services.sender.delivery.recorder import DatabaseHealth
from services.sender.main import MIGRATIONS
from services.sender.parts import Composers, SenderParts, SmtpSessions
from services.sender.settings import SenderSettings
from services.sender.store.send import PoolStore
from shared.crypto import SecretBox
from shared.db import migrate
from shared.messages import AccountUpdated
from shared.outbox import OutboxRelay
from shared.smtp import client_ssl_context
from shared.topology import EventPublisher, open_transaction_channel
from tests.integration.accounts_fixtures import KEY
from tests.integration.dispatcher_fixtures import Dispatcher


async def configure_account(pool: asyncpg.Pool, account_id: str, **fields: Any) -> None:
    """Changes the account as config_svc would (the sender only reads the table)."""
    for secret in ("smtp_password", "bounce_password"):
        if secret in fields:
            fields[f"{secret}_enc"] = SecretBox([KEY]).encrypt(fields.pop(secret))
    sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(fields, start=2))
    await pool.execute(f"UPDATE accounts SET {sets}, updated_at = now() WHERE id = $1",
                       account_id, *fields.values())


@dataclass
class SenderStack:
    dispatcher: Dispatcher
    supervisor: Supervisor
    settings: SenderSettings
    events: AbstractQueue  # every mail.* and account.* event of this test's topology
    seen: list[dict]
    relay: OutboxRelay
    relay_task: asyncio.Task

    async def stop(self) -> None:
        await self.supervisor.stop(10)
        self.relay.stop()
        async with asyncio.timeout(10):
            await self.relay_task

    @property
    def account_id(self) -> str:
        return self.dispatcher.account_id

    async def announce_change(self, account_id: str | None = None, event: Any = None) -> None:
        """The event (account.updated unless told) config_svc publishes after a change of an
        account (the stack's unless told)."""
        account_id = account_id or self.account_id
        row = await self.dispatcher.pool.fetchrow(
            "SELECT * FROM accounts WHERE id = $1", account_id)
        from services.config_svc.repository import to_public

        publisher = EventPublisher(self.dispatcher.channel, self.dispatcher.topology)
        await publisher.publish((event or AccountUpdated)(account_id=account_id,
                                                          account=to_public(row)))

    async def completed(self, delivery_id: str, timeout: float = 30) -> dict:
        """The delivery's `delivery.completed` (seen before or arriving)."""
        return await self.wait_event(
            lambda e: e["type"] == "delivery.completed" and e["delivery_id"] == delivery_id,
            timeout=timeout)

    async def wait_event(self, predicate: Any, timeout: float = 20) -> dict:
        """The first event (seen before or arriving) that `predicate` accepts."""
        for event in self.seen:
            if predicate(event):
                return event
        async with self.events.iterator() as messages, asyncio.timeout(timeout):
            async for message in messages:
                await message.ack()
                event = orjson.loads(message.body)
                self.seen.append(event)
                if predicate(event):
                    return event
        raise AssertionError("unreachable")

    def of_type(self, kind: str) -> list[dict]:
        return [event for event in self.seen if event["type"] == kind]


async def sender_on(start_sender: Any, server: Any, settings: dict | None = None,
                    **fields: Any) -> SenderStack:
    """A sender started with `settings` changed (`start_sender`'s), its account sending to the
    test SMTP `server` with `fields` changed, as config_svc would announce it."""
    stack: SenderStack = await start_sender(**(settings or {}))
    await configure_account(stack.dispatcher.pool, stack.account_id, smtp_host=server.host,
                            smtp_port=server.port, **fields)
    await stack.announce_change()
    return stack


def sender_settings(amqp_url: str, postgres_dsn: str, replica: str,
                    **changes: Any) -> SenderSettings:
    values: dict[str, Any] = {
        "amqp_url": amqp_url, "postgres_dsn": postgres_dsn, "fernet_keys": KEY,
        "replica_id": replica, "smtp_timeout_s": 5, "retry_delays_s": "1,2",
        "probe_min_s": 0.5, "probe_max_s": 2, "reconcile_s": 2, "lease_ttl_s": 10,
        "connect_failures_to_pause": 2,
    }
    values.update(changes)
    return SenderSettings(**values)


@pytest.fixture
def sender_overrides() -> dict:
    """Tests change the sender's settings by overriding this fixture or mutating it."""
    return {}


@pytest.fixture
async def start_sender(dispatcher: Dispatcher, amqp: AbstractRobustConnection,
                       amqp_url: str, postgres_dsn: str, unique: str,
                       sender_overrides: dict) -> AsyncIterator[Any]:
    async with dispatcher.pool.acquire() as db:
        await migrate(db, "sender", MIGRATIONS)
        # A sender serves every live account; the other tests' accounts point nowhere.
        await db.execute("UPDATE accounts SET deleted_at = now() WHERE id <> $1 "
                         "AND deleted_at IS NULL", dispatcher.account_id)
    stacks: list[SenderStack] = []

    async def start(**changes: Any) -> SenderStack:
        """A sender with the fixture's settings, changed by `changes` (e.g. smtp_ca_file)."""
        settings = sender_settings(amqp_url, postgres_dsn, f"{unique}-{len(stacks)}",
                                   **{**sender_overrides, **changes})
        events = await dispatcher.channel.declare_queue(exclusive=True)
        for key in ("mail.*", "account.*", "delivery.completed", "delivery.cancelled"):
            await events.bind(dispatcher.topology.events_exchange, routing_key=key)
        relay = OutboxRelay(dispatcher.pool, await open_transaction_channel(amqp),
                            dispatcher.topology, table="sender_outbox", poll_s=0.2)
        box, ssl_context = SecretBox([KEY]), client_ssl_context(settings.smtp_ca_file)
        sends = PoolStore(dispatcher.pool)
        supervisor = Supervisor(amqp, SenderParts(
            pool=dispatcher.pool, settings=settings, box=box, ssl_context=ssl_context,
            topology=dispatcher.topology, publish_channel=dispatcher.channel,
            composers=Composers(sends), wake_events=relay.wake, database=DatabaseHealth(),
            verp=Verp([KEY]), store=sends, sessions=SmtpSessions(box, ssl_context, settings)),
            amqp_url=amqp_url)
        relay_task = asyncio.create_task(relay.run())
        await supervisor.start()
        stack = SenderStack(dispatcher, supervisor, settings, events, [], relay, relay_task)
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        await stack.stop()
