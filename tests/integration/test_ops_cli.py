"""The operators' command line (`mail-ops`) on the real RabbitMQ and PostgreSQL.

Each test runs the CLI in-process (`run(parse_args([...]))`, the settings from the stack's
environment) against a topology of its own prefix, or the run-wide one of the accounts tests
(the outbox is one table: whichever relay drains it publishes to that prefix)."""

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from services.dispatcher.intake import DeadLetters
from services.dispatcher.rejection import INVALID_REQUEST, Rejection
from services.ops.cli import OpsSettings, parse_args, run
from services.ops.dead import RENEW_AT, DeadQueue
from services.ops.letters import PREVIEW_KEEP
from services.sender.main import NEEDED
from shared.db import migrate
from shared.topology import Topology, make_message, open_confirmed_channel, publish
from tests.integration.accounts_fixtures import TOPOLOGY, AccountsApi, auth, events_queue
from tests.integration.amqp_helpers import receive
from tests.support.waiting import eventually


async def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await run(parse_args(list(argv)), OpsSettings(), out)
    return code, out.getvalue()


async def cli_json(*argv: str, code: int = 0) -> Any:
    got, out = await cli(*argv, "--json")
    assert got == code, out
    return orjson.loads(out)


async def depth(channel: AbstractChannel, queue: str) -> int:
    """Ready messages now (a robust channel's declare_queue answers from its cache)."""
    underlay = await channel.get_underlay_channel()
    return (await underlay.queue_declare(queue, passive=True)).message_count or 0


async def depth_becomes(channel: AbstractChannel, queue: str, count: int) -> None:
    async def check() -> bool:
        return await depth(channel, queue) == count
    await eventually(check, timeout=10)


async def stays(channel: AbstractChannel, queue: str, count: int) -> None:
    """Still `count` after a moment (the broker settles returned messages asynchronously)."""
    await asyncio.sleep(0.3)
    await depth_becomes(channel, queue, count)


@pytest.fixture
async def channel(amqp: AbstractRobustConnection) -> AsyncIterator[AbstractChannel]:
    channel = await open_confirmed_channel(amqp)
    yield channel
    await channel.close()


@pytest.fixture
async def topology(amqp: AbstractRobustConnection,
                   unique: str) -> AsyncIterator[Topology]:
    """A private topology, deleted afterwards with whatever the test added under its prefix."""
    topology = Topology(prefix=unique)
    setup = await amqp.channel()
    await topology.declare(setup)
    yield topology
    queues = [topology.dead_queue, topology.requests_queue, f"{unique}.work",
              topology.account_queue(f"{unique}-acc"),
              *(topology.retry_name(d) for d in topology.retry_delays_s)]
    exchanges = [topology.requests_exchange, topology.events_exchange, topology.send_exchange,
                 topology.dead_exchange, f"{unique}.jobs",
                 *(topology.retry_name(d) for d in topology.retry_delays_s)]
    cleanup = await amqp.channel()
    for name in queues:
        await cleanup.queue_delete(name)
    for name in exchanges:
        await cleanup.exchange_delete(name)
    await cleanup.close()
    await setup.close()


@pytest.fixture
async def sender_schema(pool: asyncpg.Pool) -> None:
    """`accounts` reads the sender's account_runtime too."""
    async with pool.acquire() as db:
        for service, folder in NEEDED.items():
            await migrate(db, service, folder)


# -- mail.dead ----------------------------------------------------------------------------------


async def test_a_refused_request_is_listed_replayed_to_its_exchange_and_leaves_mail_dead(
    channel: AbstractChannel, topology: Topology, unique: str,
) -> None:
    watch = await channel.declare_queue(exclusive=True)
    await watch.bind(topology.requests_exchange, routing_key="delivery.request")
    dead_letters = DeadLetters(channel, topology)  # the dispatcher's own path to mail.dead
    request = orjson.dumps({"delivery_id": f"{unique}-1", "subject": "hello"})
    await dead_letters.send(request, f"{unique}-1", Rejection(
        INVALID_REQUEST, "recipients: field required", f"{unique}-1"))
    await dead_letters.send(b"not json", f"{unique}-2", Rejection(
        INVALID_REQUEST, "not JSON", None))
    await depth_becomes(channel, topology.dead_queue, 2)

    listed = await cli_json("--prefix", unique, "dead", "list")
    assert [m["message_id"] for m in listed["messages"]] == [f"{unique}-1", f"{unique}-2"]
    first = listed["messages"][0]
    assert first["reason"] == "invalid_request"
    assert first["detail"] == "recipients: field required"
    assert first["delivery_id"] == f"{unique}-1"
    assert first["origin"] == f"{topology.requests_exchange} / delivery.request"
    [shown] = await cli_json("--prefix", unique, "dead", "show", f"{unique}-1")
    assert shown["x-original-exchange"] == topology.requests_exchange
    assert shown["x-original-routing-key"] == "delivery.request"
    assert shown["replay"] == (f"exchange {topology.requests_exchange!r}, "
                               "routing key 'delivery.request'")
    assert '"subject":"hello"' in shown["body_preview"]
    await stays(channel, topology.dead_queue, 2)  # reading changes nothing

    dry = await cli_json("--prefix", unique, "dead", "replay", "--message-id", f"{unique}-1",
                         "--dry-run")
    assert [o["action"] for o in dry["outcomes"]] == ["would_replay"]
    await stays(channel, topology.dead_queue, 2)
    assert await watch.get(fail=False) is None

    done = await cli_json("--prefix", unique, "dead", "replay", "--message-id", f"{unique}-1")
    assert [o["action"] for o in done["outcomes"]] == ["replayed"]
    [arrived] = await receive(watch)
    assert arrived.body == request
    assert arrived.message_id == f"{unique}-1"
    assert arrived.routing_key == "delivery.request"
    assert "x-replayed-at" in arrived.headers
    assert not {"x-reason", "x-detail", "x-death"} & set(arrived.headers)
    await depth_becomes(channel, topology.dead_queue, 1)
    listed = await cli_json("--prefix", unique, "dead", "list")
    assert [m["message_id"] for m in listed["messages"]] == [f"{unique}-2"]


async def test_a_message_dead_lettered_by_the_broker_goes_back_to_its_x_death_origin(
    channel: AbstractChannel, topology: Topology, unique: str,
) -> None:
    jobs = await channel.declare_exchange(f"{unique}.jobs", aio_pika.ExchangeType.DIRECT,
                                          durable=True)
    work = await channel.declare_queue(f"{unique}.work", durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 1,
        "x-dead-letter-exchange": topology.dead_exchange})
    await work.bind(jobs, routing_key="work")
    await publish(jobs, "work", make_message(b'{"n": 1}', message_id=f"{unique}-job",
                                             headers={"delivery_id": "d-1"}))
    while (message := await work.get(fail=False)) is not None:  # over the delivery limit
        await message.nack(requeue=True)
    await depth_becomes(channel, topology.dead_queue, 1)

    [shown] = await cli_json("--prefix", unique, "dead", "show", "1")
    assert shown["message_id"] == f"{unique}-job"
    assert shown["reason"] == "delivery_limit"
    [death] = shown["x-death"]
    assert death["queue"] == f"{unique}.work"
    assert death["exchange"] == f"{unique}.jobs"
    assert death["routing-keys"] == ["work"]

    done = await cli_json("--prefix", unique, "dead", "replay", "--reason", "delivery_limit")
    assert [(o["action"], o["detail"]) for o in done["outcomes"]] == [("replayed", "x-death")]
    await depth_becomes(channel, topology.dead_queue, 0)
    back = await work.get(timeout=10)
    await back.ack()
    assert back.body == b'{"n": 1}'
    assert back.headers["delivery_id"] == "d-1"
    assert "x-death" not in back.headers
    assert "x-replayed-at" in back.headers


async def test_a_message_with_nowhere_to_go_is_refused_and_stays(
    channel: AbstractChannel, topology: Topology, unique: str,
) -> None:
    dead = await channel.get_exchange(topology.dead_exchange)
    account_id = f"{unique}-acc"
    job_headers = {"delivery_id": "d-2", "account_id": account_id, "x-reason": "account_deleted",
                   "x-original-queue": topology.account_queue(account_id),
                   "x-account-id": account_id}
    await publish(dead, account_id, make_message(b'{"job": 2}', message_id="d-2:0",
                                                 headers=job_headers))
    await publish(dead, "", make_message(b"orphan", message_id=f"{unique}-orphan"))
    await depth_becomes(channel, topology.dead_queue, 2)

    code, out = await cli("--prefix", unique, "dead", "replay", "--all")
    assert code == 1
    assert "does not exist (account deleted?)" in out
    assert "nowhere known to send it back" in out
    assert "2 refused" in out
    await stays(channel, topology.dead_queue, 2)

    account_queue = await topology.declare_account_queue(channel, account_id)  # it exists again
    done = await cli_json("--prefix", unique, "dead", "replay", "--message-id", "d-2:0")
    assert [(o["action"], o["detail"]) for o in done["outcomes"]] == [
        ("replayed", "account queue")]
    [job] = await receive(account_queue)  # single active consumer: no basic.get
    assert job.body == b'{"job": 2}'
    assert job.headers["account_id"] == account_id
    await depth_becomes(channel, topology.dead_queue, 1)
    listed = await cli_json("--prefix", unique, "dead", "list")
    assert [m["message_id"] for m in listed["messages"]] == [f"{unique}-orphan"]


async def test_reading_mail_dead_often_keeps_every_message_and_its_order(
    channel: AbstractChannel, topology: Topology, unique: str,
) -> None:
    dead = await channel.get_exchange(topology.dead_exchange)
    ids = [f"{unique}-{n}" for n in range(5)]
    for message_id in ids:
        await publish(dead, "", make_message(b"{}", message_id=message_id,
                                             headers={"x-reason": "test"}))
    await depth_becomes(channel, topology.dead_queue, 5)
    for _ in range(25):  # more than RabbitMQ 4.0's default delivery limit of 20
        listed = await cli_json("--prefix", unique, "dead", "list", "--limit", "2")
        assert listed["read"] == 5
        assert [m["message_id"] for m in listed["messages"]] == ids[:2]
    await depth_becomes(channel, topology.dead_queue, 5)
    # Each read counted a delivery; a message read RENEW_AT times was given back as a copy.
    for position in range(1, 6):
        [shown] = await cli_json("--prefix", unique, "dead", "show", str(position))
        assert shown["message_id"] == ids[position - 1]
        assert shown["headers"]["x-reason"] == "test"
        assert shown["headers"].get("x-delivery-count", 0) < RENEW_AT


# -- accounts -----------------------------------------------------------------------------------


async def next_event(queue: AbstractQueue, account_id: str, kind: str,
                     timeout: float = 10) -> dict:
    async def check() -> dict | None:
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            event = orjson.loads(message.body)
            if event.get("account_id") == account_id and event["type"] == kind:
                return event
        return None
    return await eventually(check, timeout=timeout)


async def test_pause_and_resume_flip_the_account_and_announce_it(
    accounts_api: AccountsApi, sender_schema: None,
) -> None:
    account = await accounts_api.create()
    events = await events_queue(accounts_api.channel)

    result = await cli_json("--prefix", TOPOLOGY.prefix, "pause", account["id"],
                            "--by", "tanaka")
    assert result["paused"] is True
    assert result["changed"] is True
    row = await accounts_api.pool.fetchrow(
        "SELECT paused, updated_by FROM accounts WHERE id = $1", account["id"])
    assert (row["paused"], row["updated_by"]) == (True, "cli:tanaka")
    paused = await next_event(events, account["id"], "account.paused")
    assert paused["reason"] == "operator"

    again = await cli_json("--prefix", TOPOLOGY.prefix, "pause", account["id"])
    assert again["changed"] is False  # no second event for no change

    code, out = await cli("--prefix", TOPOLOGY.prefix, "resume", account["id"], "--by", "tanaka")
    assert code == 0, out
    assert "resumed by cli:tanaka" in out
    assert await accounts_api.pool.fetchval(
        "SELECT paused FROM accounts WHERE id = $1", account["id"]) is False
    await next_event(events, account["id"], "account.resumed")
    await asyncio.sleep(0.5)
    late = [orjson.loads(m.body)["type"] for m in
            [await events.get(fail=False, no_ack=True) for _ in range(5)] if m is not None]
    assert "account.paused" not in late  # the repeated pause published nothing

    assert (await cli("--prefix", TOPOLOGY.prefix, "pause", str(uuid.uuid4())))[0] == 1
    assert (await cli("--prefix", TOPOLOGY.prefix, "pause", "not-an-id"))[0] == 1


async def test_accounts_lists_an_account_with_its_state_and_queue_depth(
    accounts_api: AccountsApi, sender_schema: None,
) -> None:
    account = await accounts_api.create(send_interval_ms=2500)
    send = await accounts_api.channel.get_exchange(TOPOLOGY.send_exchange)
    for n in range(2):
        await publish(send, account["id"], make_message(b"{}", message_id=f"job-{n}"))
    await accounts_api.pool.execute(
        "INSERT INTO account_runtime (account_id, interval_ms, last_end) "
        "VALUES ($1, 5000, now())", account["id"])

    async def listed() -> dict | None:
        [row] = await cli_json("--prefix", TOPOLOGY.prefix, "accounts", account["id"])
        return row if row["queue_depth"] == 2 else None
    row = await eventually(listed, timeout=10)
    assert row["name"] == account["name"]
    assert row["paused"] is False
    assert row["send_interval_ms"] == 2500
    assert row["throttled_interval_ms"] == 5000
    assert row["last_send"] is not None

    await cli_json("--prefix", TOPOLOGY.prefix, "pause", account["id"])
    code, out = await cli("--prefix", TOPOLOGY.prefix, "accounts", account["id"])
    assert code == 0
    header, line = out.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "DEFAULT"]
    assert account["name"] in line
    assert "paused (operator)" in line
    assert "5000 throttled (2500)" in line

    queue = await TOPOLOGY.declare_account_queue(accounts_api.channel, account["id"])
    await queue.purge()
    response = await accounts_api.client.delete(f"/v1/accounts/{account['id']}",
                                                headers=auth())
    assert response.status_code == 204
    assert (await cli("--prefix", TOPOLOGY.prefix, "accounts", account["id"]))[0] == 1


async def test_an_accounts_quotas_come_back_from_the_api_and_the_cli_lists_their_use(
    accounts_api: AccountsApi, sender_schema: None,
) -> None:
    account = await accounts_api.create(quota_per_minute=30, quota_per_day=2000)
    assert (account["quota_per_minute"], account["quota_per_hour"],
            account["quota_per_day"]) == (30, None, 2000)
    response = await accounts_api.client.patch(
        f"/v1/accounts/{account['id']}", json={"quota_per_day": None, "quota_per_hour": 1500},
        headers=auth())
    assert response.status_code == 200, response.text
    assert (response.json()["quota_per_hour"], response.json()["quota_per_day"]) == (1500, None)
    refused = await accounts_api.client.patch(
        f"/v1/accounts/{account['id']}", json={"quota_per_minute": 0}, headers=auth())
    assert refused.status_code == 422
    await accounts_api.pool.execute(
        "INSERT INTO account_sends (account_id, at) VALUES ($1, now() - interval '10 seconds'), "
        "($1, now() - interval '2 minutes'), ($1, now() - interval '2 hours')", account["id"])

    read = await accounts_api.client.get(f"/v1/accounts/{account['id']}", headers=auth())
    assert read.json()["quota_used"] == {"minute": 1, "hour": 2}
    [row] = await cli_json("--prefix", TOPOLOGY.prefix, "accounts", account["id"])
    assert row["quotas"] == {"minute": {"limit": 30, "used": 1},
                             "hour": {"limit": 1500, "used": 2}}
    code, out = await cli("--prefix", TOPOLOGY.prefix, "accounts", account["id"])
    assert code == 0 and "1/30 a minute 2/1500 a hour" in out


async def test_reading_mail_dead_holds_only_a_preview_of_a_big_body_yet_replays_it_whole(
    channel: AbstractChannel, topology: Topology, unique: str, amqp: AbstractRobustConnection,
) -> None:
    watch = await channel.declare_queue(exclusive=True)
    await watch.bind(topology.requests_exchange, routing_key="delivery.request")
    big = orjson.dumps({"delivery_id": f"{unique}-big", "text": "x" * (2 << 20)})
    await DeadLetters(channel, topology).send(big, f"{unique}-big", Rejection(
        INVALID_REQUEST, "too big to keep whole", f"{unique}-big"))
    await depth_becomes(channel, topology.dead_queue, 1)

    listed = await cli_json("--prefix", unique, "dead", "list")
    assert listed["messages"][0]["body_bytes"] == len(big)
    async with DeadQueue(amqp, topology) as dead:  # as `dead list` and `dead show` read
        [letter] = dead.letters
        assert (letter.body_bytes, len(letter.message.body), letter.whole) == (
            len(big), PREVIEW_KEEP, False)

    done = await cli_json("--prefix", unique, "dead", "replay", "--message-id", f"{unique}-big")
    assert [o["action"] for o in done["outcomes"]] == ["replayed"]
    [arrived] = await receive(watch)
    assert arrived.body == big


async def test_the_suppression_list_is_listed_added_to_and_taken_from(
    sender_schema: None, pool: asyncpg.Pool,
) -> None:
    address = f"Ops-{uuid.uuid4().hex[:8]}@example.com"
    added = await cli_json("suppress", address, "--reason", "complaint", "--detail",
                           "called the shop", "--by", "tanaka")
    assert (added["email"], added["reason"], added["source"], added["detail"]) == (
        address, "complaint", "cli:tanaka", "called the shop")
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE email_key = $1",
                               address.lower()) == 1

    listed = await cli_json("suppressions", "--q", address.lower()[:12])
    assert listed["total"] == 1 and listed["items"][0]["email"] == address
    code, out = await cli("suppressions", "--q", address[:12])
    assert code == 0 and address in out and "1 of 1" in out

    assert (await cli("suppress", "not an address"))[0] == 1
    removed = await cli_json("unsuppress", address.upper())  # any case
    assert removed["removed"] is True
    assert (await cli("unsuppress", address))[0] == 1  # not there any more
    assert (await cli_json("suppressions", "--q", address.lower()[:12]))["total"] == 0
