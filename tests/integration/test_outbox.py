"""The outbox relay shared by config_svc and the sender, on a real PostgreSQL and RabbitMQ."""

import contextlib

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection

from services.sender.main import MIGRATIONS as SENDER_MIGRATIONS
from shared.db import migrate
from shared.messages import MailSent
from shared.outbox import OutboxRelay
from shared.topology import Topology, open_confirmed_channel, open_transaction_channel
from tests.integration.amqp_helpers import receive
from tests.integration.dispatcher_fixtures import migrate_all
from tests.support.waiting import eventually


def sent_event(index: int) -> MailSent:
    return MailSent(event_id=f"ev-{index}", delivery_id="d-outbox", account_id="acc",
                    recipient=f"r{index}@example.com", message_id=f"<m{index}@example.com>",
                    smtp_code=250, attempts=1)


async def test_events_written_while_no_relay_runs_go_out_in_order_and_a_bad_row_is_dropped(
        pool: asyncpg.Pool, amqp: AbstractRobustConnection, unique: str) -> None:
    await migrate_all(pool)
    async with pool.acquire() as db:
        await migrate(db, "sender", SENDER_MIGRATIONS)
        await db.execute("DELETE FROM sender_outbox")
        rows = [("mail.sent", e.event_id, e.model_dump(mode="json"))
                for e in map(sent_event, range(3))]
        # A row the contract refuses (written by a bug) between good ones.
        rows.insert(1, ("mail.sent", "ev-bad", {"type": "mail.sent", "event_id": "ev-bad"}))
        await db.executemany(
            "INSERT INTO sender_outbox (routing_key, event_id, body) VALUES ($1, $2, $3)", rows)
    topology = Topology(prefix=unique)
    channel = await open_confirmed_channel(amqp)
    await topology.declare(channel)
    listener = await channel.declare_queue(exclusive=True)
    await listener.bind(topology.events_exchange, routing_key="mail.*")

    relay = OutboxRelay(pool, await open_transaction_channel(amqp), topology,
                        table="sender_outbox", poll_s=1)
    assert await relay.drain() == 3

    messages = await receive(listener, count=3)
    assert [m.message_id for m in messages] == ["ev-0", "ev-1", "ev-2"]
    assert [m.routing_key for m in messages] == ["mail.sent"] * 3
    assert [orjson.loads(m.body)["recipient"] for m in messages] == [
        "r0@example.com", "r1@example.com", "r2@example.com"]
    assert messages[0].headers["delivery_id"] == "d-outbox"
    assert await pool.fetchval("SELECT count(*) FROM sender_outbox") == 0
    assert await relay.drain() == 0
    await channel.close()


def test_only_known_outbox_tables_are_accepted() -> None:
    with pytest.raises(ValueError, match="not an outbox table"):
        OutboxRelay(None, None, Topology(), table="accounts; DROP TABLE x",  # type: ignore[arg-type]
                    poll_s=1)


async def test_a_batch_the_broker_refuses_stays_in_the_outbox_and_goes_out_later(
        pool: asyncpg.Pool, amqp: AbstractRobustConnection, unique: str) -> None:
    """The batch's rows are deleted in the database transaction that publishes them: when
    the broker refuses the batch (its exchange is missing: the channel is closed), they come
    back, and go out, once each, when the relay's channel is open again."""
    await migrate_all(pool)
    async with pool.acquire() as db:
        await migrate(db, "sender", SENDER_MIGRATIONS)
        await db.execute("DELETE FROM sender_outbox")
        await db.executemany(
            "INSERT INTO sender_outbox (routing_key, event_id, body) VALUES ($1, $2, $3)",
            [("mail.sent", e.event_id, e.model_dump(mode="json"))
             for e in map(sent_event, range(3))])
    topology = Topology(prefix=unique)
    relay = OutboxRelay(pool, await open_transaction_channel(amqp), topology,
                        table="sender_outbox", poll_s=1)
    with pytest.raises(aio_pika.exceptions.ChannelClosed):
        await relay.drain()  # no events exchange yet
    assert await pool.fetchval("SELECT count(*) FROM sender_outbox") == 3

    channel = await open_confirmed_channel(amqp)
    await topology.declare(channel)
    listener = await channel.declare_queue(exclusive=True)
    await listener.bind(topology.events_exchange, routing_key="mail.*")

    async def drained() -> bool:
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            return await relay.drain() == 3  # the channel may still be reopening
        return False

    await eventually(drained, timeout=10)
    messages = await receive(listener, count=3)
    assert [m.message_id for m in messages] == ["ev-0", "ev-1", "ev-2"]
    assert await pool.fetchval("SELECT count(*) FROM sender_outbox") == 0
    assert await relay.drain() == 0
    await channel.close()


async def test_a_batch_that_fails_half_way_leaves_nothing_to_the_next_commit(
        pool: asyncpg.Pool, amqp: AbstractRobustConnection, unique: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's publishing that times out while its frames wait for the writer leaves the
    channel open, with part of the batch in its AMQP transaction: the next batch rolls that
    back first, so each event goes out once."""
    await migrate_all(pool)
    count = 3000
    async with pool.acquire() as db:
        await migrate(db, "sender", SENDER_MIGRATIONS)
        await db.execute("DELETE FROM sender_outbox")
    topology = Topology(prefix=unique)
    channel = await open_confirmed_channel(amqp)
    await topology.declare(channel)
    listener = await channel.declare_queue(exclusive=True)
    await listener.bind(topology.events_exchange, routing_key="mail.*")
    relay_channel = await open_transaction_channel(amqp)
    relay = OutboxRelay(pool, relay_channel, topology, table="sender_outbox", poll_s=1,
                        batch=count)

    async def write(indexes: range) -> None:
        await pool.executemany(
            "INSERT INTO sender_outbox (routing_key, event_id, body) VALUES ($1, $2, $3)",
            [("mail.sent", e.event_id, e.model_dump(mode="json"))
             for e in map(sent_event, indexes)])

    await write(range(1))
    assert await relay.drain() == 1  # the channel is in transaction mode now
    await write(range(1, count + 1))
    underlay = await relay_channel.get_underlay_channel()
    monkeypatch.setattr("shared.outbox.PUBLISH_TIMEOUT_S", 0.002)
    with pytest.raises(TimeoutError):
        await relay.drain()
    assert await underlay.queue_declare(listener.name, passive=True)  # the channel still open
    assert await pool.fetchval("SELECT count(*) FROM sender_outbox") == count
    monkeypatch.setattr("shared.outbox.PUBLISH_TIMEOUT_S", 60)
    assert await relay.drain() == count
    assert await relay_channel.get_underlay_channel() is underlay

    # The commit-ok came after every message was enqueued: the count is final.
    waiting = (await underlay.queue_declare(listener.name, passive=True)).message_count
    assert waiting == count + 1
    messages = await receive(listener, count=count + 1)
    assert [m.message_id for m in messages] == [f"ev-{i}" for i in range(count + 1)]
    await channel.close()


def test_a_confirming_channel_is_refused() -> None:
    class Confirming:
        publisher_confirms = True

    with pytest.raises(ValueError, match="transactions"):
        OutboxRelay(None, Confirming(), Topology(), table="sender_outbox",  # type: ignore[arg-type]
                    poll_s=1)
