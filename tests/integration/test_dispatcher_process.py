"""The dispatcher as a real process: killed with SIGKILL in the middle of a fan-out."""

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection

from shared.auth import issue_token
from shared.db import Pooling
from shared.topology import Topology, make_message, open_confirmed_channel, publish
from tests.integration.amqp_helpers import receive
from tests.integration.dispatcher_fixtures import insert_account, migrate_all, request_body
from tests.support.processes import ServiceProcess
from tests.support.waiting import eventually

JWT_SECRET = "process-test-secret-of-32-bytes!!"
WINDOW = 250


@pytest.fixture
async def dispatcher_process(amqp_url: str, postgres_dsn: str, db_pooling: Pooling,
                             pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    await migrate_all(pool)
    process = ServiceProcess("services.dispatcher", {
        "MAIL_AMQP_URL": amqp_url, "MAIL_POSTGRES_DSN": postgres_dsn,
        "MAIL_JWT_SECRET": JWT_SECRET, "MAIL_FANOUT_WINDOW": str(WINDOW),
        "MAIL_DB_POOLING": db_pooling}, tmp_path / "dispatcher.log")
    yield process
    await process.kill()


async def test_a_dispatcher_killed_mid_fanout_publishes_every_job_and_one_window_at_most_twice(
    dispatcher_process: ServiceProcess, amqp: AbstractRobustConnection, pool: asyncpg.Pool,
) -> None:
    topology = Topology()  # the process uses the contract's names
    channel = await open_confirmed_channel(amqp)
    await topology.declare(channel)
    account_id = await insert_account(pool)
    queue = await topology.declare_account_queue(channel, account_id)
    total = 5_000  # 20 windows of 250: the kill, at the first one queued, is mid fan-out
    body = request_body(account_id=account_id, subject="hello", text="hi {{name}}", html=None,
                        recipients=[{"email": f"r{i}@example.com", "name": f"n{i}"}
                                    for i in range(total)])
    await dispatcher_process.start()
    requests = await channel.get_exchange(topology.requests_exchange)
    await publish(requests, "delivery.request",
                  make_message(orjson.dumps(body), message_id=body["delivery_id"]))

    async def some_queued() -> int:
        return await pool.fetchval(
            "SELECT count(*) FROM delivery_recipients WHERE delivery_id = $1 "
            "AND state = 'queued'", body["delivery_id"])

    queued_at_kill = await eventually(some_queued, timeout=60, interval=0.005)
    await dispatcher_process.kill()
    assert queued_at_kill < total, "the fan-out ended before the kill: nothing was tested"

    await dispatcher_process.start()

    async def accepted() -> bool:
        return await pool.fetchval(
            "SELECT accepted_at IS NOT NULL FROM deliveries WHERE delivery_id = $1",
            body["delivery_id"])

    await eventually(accepted, timeout=60)
    depth = await topology.account_queue_depth(channel, account_id)  # every publish is in
    jobs = await receive(queue, depth, timeout=60)
    job_ids = [message.message_id for message in jobs]
    assert set(job_ids) == {f"{body['delivery_id']}:{i}" for i in range(total)}  # none lost
    # Twice at most the one window whose broker commit-ok the kill came after and whose
    # database commit it came before (services/dispatcher/fanout.py); the sender sends such
    # a copy no second time (its row is settled).
    twice = sorted(int(job.rsplit(":", 1)[1]) for job, n in Counter(job_ids).items() if n > 1)
    assert len(job_ids) - total == len(twice) and len(twice) in (0, WINDOW)
    assert not twice or twice == list(range(twice[0], twice[0] + WINDOW))
    assert await topology.account_queue_depth(channel, account_id) == 0

    token = issue_token(JWT_SECRET, "tanaka", [])
    async with httpx.AsyncClient(base_url=dispatcher_process.base_url,
                                 timeout=5) as client:
        status = await client.get(f"/v1/deliveries/{body['delivery_id']}",
                                  headers={"Authorization": f"Bearer {token}"})
        assert status.status_code == 200
        assert status.json()["total"] == total
        assert status.json()["queued"] == total
        assert status.json()["state"] == "queued"
        other = issue_token(JWT_SECRET, "someone-else", [])
        hidden = await client.get(f"/v1/deliveries/{body['delivery_id']}",
                                  headers={"Authorization": f"Bearer {other}"})
        assert hidden.status_code == 404
        listing = await client.get(f"/v1/deliveries/{body['delivery_id']}/recipients",
                                   params={"state": "queued", "limit": 2},
                                   headers={"Authorization": f"Bearer {token}"})
        assert [r["email"] for r in listing.json()["items"]] == ["r0@example.com",
                                                                 "r1@example.com"]
        assert (await client.get(f"/v1/deliveries/{body['delivery_id']}")).status_code == 401
    assert await dispatcher_process.stop() == 0, dispatcher_process.log_tail()
    await channel.close()
