import asyncio
import subprocess
import sys
from pathlib import Path

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import DeliveryError
from yarl import URL

from shared.topology import Topology, make_message, open_confirmed_channel, publish, publish_many
from tests.integration.amqp_helpers import receive
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


async def queue_info(management: httpx.AsyncClient, amqp_url: str, name: str) -> dict:
    vhost = URL(amqp_url).path.lstrip("/") or "/"
    response = await management.get(f"/queues/{vhost.replace('/', '%2F')}/{name}")
    response.raise_for_status()
    return response.json()


async def declared_names(management: httpx.AsyncClient, prefix: str) -> tuple[list, list]:
    queues = (await management.get("/queues", params={"columns": "name,arguments"})).json()
    exchanges = (await management.get("/exchanges", params={"columns": "name,type"})).json()
    mine = lambda rows: sorted(  # noqa: E731
        (r["name"], str(r.get("arguments", r.get("type")))) for r in rows
        if r["name"].startswith(prefix + ".")
    )
    return mine(queues), mine(exchanges)


async def test_declaring_the_topology_twice_changes_nothing(
    amqp: AbstractRobustConnection, management: httpx.AsyncClient, unique: str
) -> None:
    topology = Topology(prefix=unique)
    channel = await amqp.channel()
    await topology.declare(channel)
    await topology.declare_account_queue(channel, "acc-1")
    first = await declared_names(management, unique)

    await topology.declare(channel)
    await topology.declare_account_queue(channel, "acc-1")
    second = await declared_names(management, unique)

    assert first == second
    queue_names = [name for name, _ in first[0]]
    assert f"{unique}.dispatcher.requests" in queue_names
    assert f"{unique}.dead" in queue_names
    assert f"{unique}.retry.30s" in queue_names
    assert f"{unique}.send.acc-1" in queue_names
    await channel.close()


async def test_account_queue_is_quorum_with_single_active_consumer(
    amqp: AbstractRobustConnection, management: httpx.AsyncClient, amqp_url: str, unique: str
) -> None:
    topology = Topology(prefix=unique)
    channel = await amqp.channel()
    await topology.declare(channel)
    await topology.declare_account_queue(channel, "acc-2")

    info = await queue_info(management, amqp_url, f"{unique}.send.acc-2")
    assert info["type"] == "quorum"
    assert info["arguments"]["x-single-active-consumer"] is True
    requests = await queue_info(management, amqp_url, f"{unique}.dispatcher.requests")
    assert requests["arguments"]["x-dead-letter-exchange"] == f"{unique}.dead"
    await channel.close()


async def test_a_message_routed_by_account_reaches_only_that_account_queue(
    amqp: AbstractRobustConnection, unique: str
) -> None:
    topology = Topology(prefix=unique)
    channel = await open_confirmed_channel(amqp)
    await topology.declare(channel)
    mine = await topology.declare_account_queue(channel, "acc-a")
    other = await topology.declare_account_queue(channel, "acc-b")
    send = await channel.get_exchange(topology.send_exchange)

    await publish(send, "acc-a", make_message(b'{"n": 1}', message_id="m1"))
    await publish(send, "acc-b", make_message(b'{"marker": true}', message_id="m2"))

    [message] = await receive(mine)
    assert message.body == b'{"n": 1}'
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    # Had "acc-a"'s message reached the other queue too, it would come before the marker.
    [first_of_other] = await receive(other)
    assert first_of_other.message_id == "m2"
    await channel.close()


async def test_publishing_with_an_unroutable_routing_key_raises(
    amqp: AbstractRobustConnection, unique: str
) -> None:
    topology = Topology(prefix=unique)
    channel = await open_confirmed_channel(amqp)
    await topology.declare(channel)
    send = await channel.get_exchange(topology.send_exchange)

    with pytest.raises(DeliveryError):
        await publish(send, "no-such-account", make_message(b"{}", message_id="lost"))
    with pytest.raises(DeliveryError):
        await publish_many(send, [("no-such-account", make_message(b"{}", message_id="m"))])
    await channel.close()


async def test_publish_many_confirms_every_message(
    amqp: AbstractRobustConnection, unique: str
) -> None:
    topology = Topology(prefix=unique)
    channel = await open_confirmed_channel(amqp)
    await topology.declare(channel)
    queue = await topology.declare_account_queue(channel, "bulk")
    send = await channel.get_exchange(topology.send_exchange)

    items = [("bulk", make_message(b"{}", message_id=f"m{i}")) for i in range(2500)]
    assert await publish_many(send, items, window=1000) == 2500

    assert await topology.account_queue_depth(channel, "bulk") == 2500
    assert len(await receive(queue, count=2500)) == 2500
    await channel.close()


async def test_a_persistent_message_survives_a_restart_of_the_broker(
    amqp_url: str, stack_dir: str, unique: str
) -> None:
    topology = Topology(prefix=unique)
    connection = await aio_pika.connect(amqp_url, timeout=10)
    channel = await open_confirmed_channel(connection)
    await topology.declare(channel)
    await topology.declare_account_queue(channel, "durable")
    send = await channel.get_exchange(topology.send_exchange)
    await publish(send, "durable", make_message(b'{"keep": true}', message_id="keep-1"))
    await connection.close()

    restart = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "deploy/local/stack.py"), "restart-rabbitmq",
        "--dir", stack_dir, stdout=subprocess.DEVNULL,
    )
    assert await restart.wait() == 0

    connection = await aio_pika.connect(amqp_url, timeout=30)
    channel = await connection.channel()
    queue = await channel.declare_queue(topology.account_queue("durable"), passive=True)
    [message] = await receive(queue)
    assert message.body == b'{"keep": true}'
    assert message.message_id == "keep-1"
    await connection.close()


async def test_a_retry_goes_back_to_its_account_and_one_whose_queue_is_gone_to_mail_dead(
    amqp: AbstractRobustConnection, unique: str, management: httpx.AsyncClient, amqp_url: str,
) -> None:
    topology = Topology(prefix=unique, retry_delays_s=(1,))
    channel = await open_confirmed_channel(amqp)
    await topology.declare(channel)
    retry_queue = await queue_info(management, amqp_url, topology.retry_name(1))
    assert retry_queue["type"] == "quorum"
    assert retry_queue["arguments"]["x-dead-letter-strategy"] == "at-least-once"
    account = await topology.declare_account_queue(channel, "acc-live")
    retry = await channel.get_exchange(topology.retry_name(1))
    await publish(retry, "acc-live", make_message(b"{}", message_id="back"))
    await publish(retry, "acc-gone", make_message(b"{}", message_id="orphan"))

    [back] = await receive(account, timeout=15)
    dead = await channel.get_queue(topology.dead_queue)
    [orphan] = await receive(dead, timeout=15)
    assert (back.message_id, orphan.message_id) == ("back", "orphan")
    # Nothing waits in the retry queue to be dead-lettered again and again.
    async def retry_queue_stats() -> dict:
        info = await queue_info(management, amqp_url, topology.retry_name(1))
        return info if "messages" in info else {}

    stats = await eventually(retry_queue_stats, timeout=30, interval=0.5)
    assert stats["messages"] == 0 and stats.get("messages_dlx", 0) == 0
    await channel.close()


async def test_an_earlier_classic_retry_queue_is_replaced_and_its_jobs_sent_back(
    amqp: AbstractRobustConnection, unique: str, management: httpx.AsyncClient, amqp_url: str,
) -> None:
    topology = Topology(prefix=unique, retry_delays_s=(60,))
    channel = await open_confirmed_channel(amqp)
    await topology.declare(channel)
    account = await topology.declare_account_queue(channel, "acc-live")
    name = topology.retry_name(60)
    old = await amqp.channel()
    await old.queue_delete(name)
    # As the first version declared it: classic, dead-lettering back through `mail.send`.
    classic = await old.declare_queue(name, durable=True, arguments={
        "x-message-ttl": 60_000, "x-dead-letter-exchange": topology.send_exchange})
    await classic.bind(name, routing_key="")
    retry = await channel.get_exchange(name)
    for key, message_id in (("acc-live", "waiting"), ("acc-gone", "orphan")):
        await publish(retry, key, make_message(b"{}", message_id=message_id))
    await old.close()

    await topology.declare(channel)  # a service of this version starting

    info = await queue_info(management, amqp_url, name)
    assert info["type"] == "quorum"
    [waiting] = await receive(account)
    [orphan] = await receive(await channel.get_queue(topology.dead_queue))
    assert (waiting.message_id, orphan.message_id) == ("waiting", "orphan")
    await channel.close()
