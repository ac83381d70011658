"""deploy/rabbitmq/definitions.json on the real broker, under least privilege.

The file is loaded into a vhost of the test's own (`mail-defs-<unique>`, its users renamed
`<user>-<unique>`, the broker being shared with the other tests), the users get test
passwords the way a deployment sets them (PUT /api/users/{name}), and then each service's
start-up and main broker operations run as its own user: what it needs works, what it must
not do is refused.

Declaring a queue with `x-dead-letter-exchange` needs READ on that queue, so a user allowed
to declare an account queue may consume it too: the dispatcher therefore only checks, with a
passive declare, that config_svc declared the account's queue before it fans out, and the
ops CLI reads queue depths the same way.
"""

import asyncio
import copy
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import orjson
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelPreconditionFailed,
    ProbableAuthenticationError,
)
from yarl import URL

from services.config_svc.queues import AccountQueues
from services.dispatcher.fanout import FanOut
from services.dispatcher.intake import DeadLetters, Intake
from services.dispatcher.locks import DeliveryLocks
from services.dispatcher.rejection import INVALID_REQUEST, Rejection
from services.ops import accounts as ops_accounts
from services.ops import dead as ops_dead
from services.sender.main import MIGRATIONS as SENDER_MIGRATIONS
from services.sender.settings import SenderSettings
from shared.auth import ADMIN_ROLE, issue_token
from shared.db import migrate
from shared.messages import AccountPaused, DeliveryAccepted, MailSent
from shared.topology import (
    EventPublisher,
    Topology,
    make_message,
    open_confirmed_channel,
    publish,
)
from tests.integration.accounts_fixtures import KEY, account_body
from tests.integration.amqp_helpers import receive
from tests.integration.dispatcher_fixtures import insert_account, migrate_all, request_body
from tests.support.processes import ServiceProcess
from tests.support.waiting import eventually

ROOT = Path(__file__).parents[2]
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
JWT_SECRET = "definitions-test-secret-of-32-bytes!"
# The naming rule of the definitions: a publisher's own queues are `events.<user>.<name>`.
PUBLISHER_QUEUE = "events.mail-publisher.status"
SENDER_DEFAULT_TIERS = tuple(
    int(part) for part in SenderSettings.model_fields["retry_delays_s"].default.split(",")
)


def load_definitions() -> dict[str, Any]:
    return json.loads(DEFINITIONS.read_text())


def for_vhost(definitions: dict[str, Any], vhost: str, suffix: str) -> dict[str, Any]:
    """The definitions moved to `vhost`, every user renamed `<user>-<suffix>`."""
    moved = copy.deepcopy(definitions)
    moved["vhosts"] = [{"name": vhost}]
    for user in moved["users"]:
        user["name"] = f"{user['name']}-{suffix}"
    for key in ("permissions", "topic_permissions"):
        for entry in moved.get(key, []):
            entry["user"] = f"{entry['user']}-{suffix}"
            entry["vhost"] = vhost
    for key in ("parameters", "policies", "queues", "exchanges", "bindings"):
        for entry in moved.get(key, []):
            entry["vhost"] = vhost
    return moved


async def refused(connection: AbstractConnection,
                  operation: Callable[[AbstractChannel], Awaitable[Any]]) -> str:
    """Runs `operation` on a fresh confirmed channel; it must be refused (ACCESS_REFUSED)."""
    channel = await open_confirmed_channel(connection)
    with pytest.raises(ChannelAccessRefused) as refusal:
        await operation(channel)
    return str(refusal.value)


async def ack(message: AbstractIncomingMessage) -> None:
    await message.ack()


async def passive_depth(channel: AbstractChannel, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue, asked of the broker now (a passive declare,
    which needs no permission at all)."""
    underlay = await channel.get_underlay_channel()
    answer = await underlay.queue_declare(queue, passive=True)
    return answer.message_count or 0, answer.consumer_count or 0


@dataclass
class Broker:
    """The definitions loaded into a vhost of this test, and connections as their users."""

    vhost: str
    suffix: str
    admin_url: URL
    management: httpx.AsyncClient
    definitions: dict[str, Any]
    connections: list[AbstractConnection] = field(default_factory=list)

    def user(self, role: str) -> str:
        return f"{role}-{self.suffix}"

    def password(self, role: str) -> str:
        return f"test-password-{role}-{self.suffix}"

    def url(self, role: str) -> str:
        return str(self.admin_url.with_user(self.user(role)).with_password(self.password(role))
                   .with_path("/" + self.vhost))

    async def connect(self, role: str, robust: bool = False) -> AbstractConnection:
        """A plain connection by default, so that a refused channel stays closed; robust
        (as the services connect) where the client's behaviour matters."""
        connect = aio_pika.connect_robust if robust else aio_pika.connect
        connection = await connect(self.url(role), timeout=10)
        self.connections.append(connection)
        return connection

    async def connect_admin(self) -> AbstractConnection:
        connection = await aio_pika.connect(str(self.admin_url.with_path("/" + self.vhost)),
                                            timeout=10)
        self.connections.append(connection)
        return connection

    async def snapshot(self, vhost: str | None = None) -> dict[str, list]:
        """Exchanges, queues and bindings of a vhost as the management API lists them."""
        vhost = vhost or self.vhost
        exchanges = (await self.management.get(f"/exchanges/{vhost}")).json()
        queues = (await self.management.get(f"/queues/{vhost}")).json()
        bindings = (await self.management.get(f"/bindings/{vhost}")).json()
        return {
            "exchanges": sorted(
                (x["name"], x["type"], x["durable"], x["auto_delete"], x["internal"],
                 json.dumps(x["arguments"], sort_keys=True))
                for x in exchanges if x["name"] and not x["name"].startswith("amq.")),
            "queues": sorted(
                (q["name"], q["durable"], q["auto_delete"], q["exclusive"],
                 json.dumps(q["arguments"], sort_keys=True))
                for q in queues),
            "bindings": sorted(
                (b["source"], b["destination"], b["destination_type"], b["routing_key"],
                 json.dumps(b["arguments"], sort_keys=True))
                for b in bindings if b["source"]),
        }

    async def close(self) -> None:
        for connection in self.connections:
            if not connection.is_closed:
                await connection.close()


@pytest.fixture
async def imported(amqp_url: str, management: httpx.AsyncClient,
                   unique: str) -> AsyncIterator[Broker]:
    """The definitions imported as they are (users without passwords) into a new vhost."""
    vhost = f"mail-defs-{unique}"
    definitions = for_vhost(load_definitions(), vhost, unique)
    admin = URL(amqp_url)
    try:
        response = await management.post("/definitions", json=definitions)
        assert response.status_code in (200, 201, 204), response.text
        # The project's administrator works on the vhost too, to set things up and look.
        response = await management.put(f"/permissions/{vhost}/{admin.user}",
                                        json={"configure": ".*", "write": ".*", "read": ".*"})
        assert response.status_code in (201, 204), response.text
        broker = Broker(vhost, unique, admin, management, definitions)
        yield broker
        await broker.close()
    finally:
        await management.delete(f"/vhosts/{vhost}")
        for user in definitions["users"]:
            await management.delete(f"/users/{user['name']}")


@pytest.fixture
async def broker(imported: Broker) -> Broker:
    """The same, with the passwords set as a deployment sets them (README: set passwords)."""
    for user in load_definitions()["users"]:
        response = await imported.management.put(
            f"/users/{imported.user(user['name'])}",
            json={"password": imported.password(user["name"]), "tags": ",".join(user["tags"])})
        assert response.status_code in (201, 204), response.text
    return imported


@pytest.fixture
async def new_account(pool: asyncpg.Pool) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Inserts live accounts in the shared database, deleted (softly) after the test, so
    that other tests' senders do not serve them."""
    await migrate_all(pool)
    async with pool.acquire() as db:
        await migrate(db, "sender", SENDER_MIGRATIONS)
    created: list[str] = []

    async def insert() -> str:
        created.append(await insert_account(pool))
        return created[-1]

    yield insert
    await pool.execute("UPDATE accounts SET deleted_at = now() WHERE id = ANY($1::uuid[])",
                       created)


async def account_queue(broker: Broker) -> tuple[str, AbstractQueue]:
    """A new account's queue, declared as config_svc declares it (by its own user)."""
    account_id = str(uuid.uuid4())
    channel = await open_confirmed_channel(await broker.connect("mail-config"))
    await AccountQueues(channel, Topology()).declare(account_id)
    return account_id, await channel.get_queue(Topology().account_queue(account_id))


async def publisher_events(broker: Broker, routing_key: str) -> AbstractQueue:
    """The publisher's own event queue (naming rule `events.<user>.<name>`), bound by it."""
    channel = await (await broker.connect("mail-publisher")).channel()
    queue = await channel.declare_queue(PUBLISHER_QUEUE, durable=True)
    await queue.bind(Topology().events_exchange, routing_key=routing_key)
    return queue


async def job_to(channel: AbstractChannel, account_id: str, index: int = 0) -> None:
    send = await channel.get_exchange(Topology().send_exchange, ensure=False)
    await publish(send, account_id, make_message(
        orjson.dumps({"job": index}), message_id=f"d1:{index}", type_="mail.send"))


# --- the file itself --------------------------------------------------------------------


def test_no_policy_limits_an_account_queue_or_drops_a_message_of_the_project() -> None:
    """The dispatcher publishes jobs in AMQP transactions, without confirms: a length limit
    with reject-publish on an account queue would drop jobs silently at commit. And the
    project's own queues alarm (reject-publish), they never drop their oldest messages."""
    account_queue_name = Topology().account_queue(str(uuid.uuid4()))
    project_queues = [account_queue_name, "mail.dead", "mail.dispatcher.requests",
                      *(Topology().retry_name(delay) for delay in SENDER_DEFAULT_TIERS)]
    limits = {"max-length", "max-length-bytes"}
    for policy in load_definitions()["policies"]:
        pattern, definition = re.compile(policy["pattern"]), policy["definition"]
        if pattern.search(account_queue_name):
            assert not limits & set(definition), policy["name"]
        if any(pattern.search(name) for name in project_queues):
            # drop-head is RabbitMQ's default overflow: a limit must say reject-publish.
            assert "overflow" not in definition or definition["overflow"] == "reject-publish"
            if limits & set(definition):
                assert definition.get("overflow") == "reject-publish", policy["name"]


def test_every_user_has_a_permission_and_no_password_in_the_file() -> None:
    definitions = load_definitions()
    users = {user["name"] for user in definitions["users"]}
    assert users == {"mail-config", "mail-dispatcher", "mail-sender", "mail-ops",
                     "mail-publisher"}
    assert all(user["password_hash"] == "" for user in definitions["users"])
    assert {entry["user"] for entry in definitions["permissions"]} == users
    assert {entry["vhost"] for entry in definitions["permissions"]} == {"mail"}


# --- loading and the topology -----------------------------------------------------------


async def test_the_users_cannot_log_in_until_their_password_is_set(imported: Broker) -> None:
    for role in ("mail-dispatcher", "mail-publisher"):
        for password in ("", imported.password(role)):
            url = URL(imported.url(role)).with_password(password)
            with pytest.raises(ProbableAuthenticationError):
                await aio_pika.connect(str(url), timeout=10)
    response = await imported.management.put(
        f"/users/{imported.user('mail-dispatcher')}",
        json={"password": imported.password("mail-dispatcher"), "tags": ""})
    assert response.status_code == 204
    await imported.connect("mail-dispatcher")


async def test_the_services_declare_exactly_the_topology_the_definitions_create(
    broker: Broker,
) -> None:
    """Same names, types and arguments (a mismatch would make every service's own declare
    fail with PRECONDITION_FAILED), and nothing more or less than the services declare."""
    assert Topology().retry_delays_s == SENDER_DEFAULT_TIERS
    loaded = await broker.snapshot()

    # What the services declare in an empty vhost ...
    empty = f"mail-topology-{broker.suffix}"
    assert (await broker.management.put(f"/vhosts/{empty}")).status_code in (201, 204)
    try:
        await broker.management.put(f"/permissions/{empty}/{broker.admin_url.user}",
                                    json={"configure": ".*", "write": ".*", "read": ".*"})
        fresh = await aio_pika.connect(str(broker.admin_url.with_path("/" + empty)), timeout=10)
        async with fresh:
            await Topology().declare(await fresh.channel())
        assert await broker.snapshot(empty) == loaded
    finally:
        await broker.management.delete(f"/vhosts/{empty}")

    # ... and declared again over the loaded definitions, by each service's user.
    for role in ("mail-dispatcher", "mail-config", "mail-sender"):
        channel = await open_confirmed_channel(await broker.connect(role))
        await Topology(retry_delays_s=SENDER_DEFAULT_TIERS).declare(channel)
    assert await broker.snapshot() == loaded

    # The check bites: other arguments than the loaded ones are refused.
    admin = await broker.connect_admin()
    with pytest.raises(ChannelPreconditionFailed):
        channel = await admin.channel()
        await channel.declare_queue(Topology().dead_queue, durable=True,
                                    arguments={"x-queue-type": "classic"})


async def test_the_policies_apply_to_the_queues_they_name(broker: Broker) -> None:
    account_id, _ = await account_queue(broker)
    await publisher_events(broker, "delivery.*")
    expected = {
        "mail.dead": ("mail-dead", "reject-publish"),
        "mail.dispatcher.requests": ("mail-requests", "reject-publish"),
        Topology().account_queue(account_id): ("mail-accounts", "reject-publish"),
        PUBLISHER_QUEUE: ("mail-subscribers", "drop-head"),
    }

    async def applied() -> bool:  # the management API shows policies with its statistics
        for name, (policy, overflow) in expected.items():
            queue = (await broker.management.get(f"/queues/{broker.vhost}/{name}")).json()
            if queue.get("policy") != policy:
                return False
            assert queue["effective_policy_definition"]["overflow"] == overflow
        return True

    await eventually(applied, timeout=30, interval=0.5)


# --- the dispatcher ---------------------------------------------------------------------


async def test_the_dispatcher_starts_consumes_requests_and_publishes_jobs_events_and_dead(
    broker: Broker,
) -> None:
    topology = Topology()
    account_id, account = await account_queue(broker)
    events = await publisher_events(broker, "delivery.*")

    # Start-up, as services/dispatcher/main.py does it.
    connection = await broker.connect("mail-dispatcher")
    confirmed = await open_confirmed_channel(connection)
    await topology.declare(confirmed)
    consuming = await connection.channel()
    await consuming.set_qos(prefetch_count=4)
    requests = await consuming.get_queue(topology.requests_queue)

    # A request from another system reaches it.
    publisher = await open_confirmed_channel(await broker.connect("mail-publisher"))
    await publish(await publisher.get_exchange(topology.requests_exchange, ensure=False),
                  "delivery.request", make_message(b'{"delivery_id": "d1"}', message_id="d1"))
    [request] = await receive(requests)
    assert request.message_id == "d1"

    # Jobs go out as FanOut publishes them: one AMQP transaction, mandatory, no confirms.
    fanout = await connection.channel(publisher_confirms=False)
    transaction = fanout.transaction()
    await transaction.select()
    send = await fanout.get_exchange(topology.send_exchange)
    for index in range(3):
        await send.publish(make_message(b"{}", message_id=f"d1:{index}", type_="mail.send"),
                           routing_key=account_id, mandatory=True)
    await transaction.commit()

    await EventPublisher(confirmed, topology).publish(DeliveryAccepted(
        delivery_id="d1", account_id=account_id, recipients=3))
    await DeadLetters(confirmed, topology).send(
        b"not json", "d2", Rejection(INVALID_REQUEST, "not JSON", "d2"))

    sender = await (await broker.connect("mail-sender")).channel()
    jobs = await receive(await sender.get_queue(account.name), 3)
    assert [job.message_id for job in jobs] == ["d1:0", "d1:1", "d1:2"]
    [event] = await receive(events)
    assert orjson.loads(event.body)["type"] == "delivery.accepted"
    ops = await (await broker.connect("mail-ops")).channel()
    dead = await (await ops.get_queue(topology.dead_queue)).get(timeout=10)
    assert dead.headers["x-reason"] == INVALID_REQUEST
    await dead.ack()


async def test_the_dispatcher_cannot_read_or_manage_account_queues(broker: Broker) -> None:
    topology = Topology()
    account_id, account = await account_queue(broker)
    connection = await broker.connect("mail-dispatcher")

    async def consume(channel: AbstractChannel) -> None:
        queue = await channel.get_queue(account.name)  # passive: allowed, it reads nothing
        await queue.consume(ack)

    async def get(channel: AbstractChannel) -> None:
        await (await channel.get_queue(account.name)).get(fail=False)

    async def purge(channel: AbstractChannel) -> None:
        await (await channel.get_queue(account.name)).purge()

    async def delete(channel: AbstractChannel) -> None:
        await channel.queue_delete(account.name)

    async def declare(channel: AbstractChannel) -> None:
        # With x-dead-letter-exchange, queue.declare needs read on the queue: refused too.
        await topology.declare_account_queue(channel, account_id)

    for operation in (consume, get, purge, delete, declare):
        reason = await refused(connection, operation)
        assert "ACCESS_REFUSED" in reason, operation.__name__

    # It may publish into mail.requests: the HTTP door (POST /v1/deliveries) queues a
    # request the AMQP way.
    channel = await open_confirmed_channel(connection)
    exchange = await channel.get_exchange(topology.requests_exchange, ensure=False)
    await publish(exchange, "delivery.request", make_message(b"{}", message_id="x"))
    await channel.close()


async def test_the_dispatcher_fans_out_into_an_account_queue_declared_by_config_svc(
    broker: Broker, pool: asyncpg.Pool, new_account: Callable[[], Awaitable[str]],
) -> None:
    account_id = await new_account()
    config = await open_confirmed_channel(await broker.connect("mail-config"))
    await AccountQueues(config, Topology()).declare(account_id)

    connection = await broker.connect("mail-dispatcher")
    confirmed = await open_confirmed_channel(connection)
    topology = Topology()
    intake = Intake(DeliveryLocks(pool), await FanOut.open(connection, topology, window=100),
                    EventPublisher(confirmed, topology), DeadLetters(confirmed, topology),
                    max_bytes=32 * 1024 * 1024)
    body = request_body(account_id=account_id)
    assert await intake.handle(orjson.dumps(body), body["delivery_id"]) == "accepted"
    admin = await (await broker.connect_admin()).channel()
    assert (await passive_depth(admin, topology.account_queue(account_id)))[0] == 2


# --- config_svc -------------------------------------------------------------------------


async def test_config_svc_declares_account_queues_and_moves_a_deleted_accounts_jobs_to_dead(
    broker: Broker,
) -> None:
    topology = Topology()
    connection = await broker.connect("mail-config")
    api_channel = await open_confirmed_channel(connection)
    await topology.declare(api_channel)  # start-up, as services/config_svc/main.py does
    queues = AccountQueues(api_channel, topology, move_timeout_s=10)
    account_id = str(uuid.uuid4())
    await queues.declare(account_id)

    dispatcher = await open_confirmed_channel(await broker.connect("mail-dispatcher"))
    for index in range(3):
        await job_to(dispatcher, account_id, index)
    assert await queues.waiting(account_id) == 3
    assert await queues.remove(account_id, "account_deleted") == 3

    # The outbox relay publishes account events on its own confirmed channel.
    outbox = await open_confirmed_channel(connection)
    await EventPublisher(outbox, topology).publish(
        AccountPaused(account_id=account_id, reason="operator"))

    ops = await (await broker.connect("mail-ops")).channel()
    dead = await ops.get_queue(topology.dead_queue)
    for _ in range(3):
        message = await dead.get(timeout=10)
        assert message.headers["x-reason"] == "account_deleted"
        await message.ack()

    async def inject_request(channel: AbstractChannel) -> None:
        exchange = await channel.get_exchange(topology.requests_exchange, ensure=False)
        await publish(exchange, "delivery.request", make_message(b"{}", message_id="x"))

    assert "ACCESS_REFUSED" in await refused(connection, inject_request)


# --- the sender -------------------------------------------------------------------------


async def test_the_sender_consumes_its_accounts_and_publishes_retries_events_and_dead(
    broker: Broker,
) -> None:
    topology = Topology(retry_delays_s=SENDER_DEFAULT_TIERS)
    connection = await broker.connect("mail-sender", robust=True)
    publishing = await open_confirmed_channel(connection)
    await topology.declare(publishing)  # start-up, as services/sender/main.py does it

    # Supervisor.start: an exclusive queue for account events, named by the client library
    # (aio-pika's robust channel: `amq_<32 hex>`; a plain channel gets `amq.gen-*` from the
    # broker). Both forms are in the sender's permissions.
    events_channel = await connection.channel()
    account_events = await events_channel.declare_queue(exclusive=True, auto_delete=True)
    assert re.fullmatch(r"amq_[0-9a-f]{32}", account_events.name), account_events.name
    plain = await (await broker.connect("mail-sender")).channel()
    server_named = await plain.declare_queue(exclusive=True, auto_delete=True)
    assert server_named.name.startswith("amq.gen-")
    await server_named.bind(topology.events_exchange, routing_key="account.*")
    await account_events.bind(topology.events_exchange, routing_key="account.*")
    config = await open_confirmed_channel(await broker.connect("mail-config"))
    account_id = str(uuid.uuid4())
    await EventPublisher(config, topology).publish(
        AccountPaused(account_id=account_id, reason="operator"))
    [event] = await receive(account_events)
    assert orjson.loads(event.body)["account_id"] == account_id

    # Supervisor._subscribe: declares the account's queue and consumes it, prefetch 1.
    consuming = await connection.channel()
    await consuming.set_qos(prefetch_count=1)
    queue = await topology.declare_account_queue(consuming, account_id)
    dispatcher = await open_confirmed_channel(await broker.connect("mail-dispatcher"))
    await job_to(dispatcher, account_id)
    [job] = await receive(queue)
    assert job.message_id == "d1:0"

    # The worker's outcomes: a retry, a job put back (pause), a dead letter, an event.
    subscriber = await publisher_events(broker, "mail.*")
    retry = await publishing.get_exchange(topology.retry_name(30), ensure=False)
    await publish(retry, account_id, make_message(b"{}", message_id="d1:0"))
    send = await publishing.get_exchange(topology.send_exchange, ensure=False)
    await publish(send, account_id, make_message(b"{}", message_id="d1:1"))
    dead = await publishing.get_exchange(topology.dead_exchange, ensure=False)
    await publish(dead, account_id, make_message(
        b"{}", message_id="d1:2", headers={"x-reason": "poison"}))
    await EventPublisher(publishing, topology).publish(MailSent(
        delivery_id="d1", account_id=account_id, recipient="a@example.com",
        message_id="<m@example.com>", smtp_code=250, attempts=1))

    admin = await (await broker.connect_admin()).channel()
    assert (await passive_depth(admin, topology.retry_name(30)))[0] == 1
    [put_back] = await receive(queue)
    assert put_back.message_id == "d1:1"
    assert (await passive_depth(admin, topology.dead_queue))[0] == 1
    [sent] = await receive(subscriber)
    assert orjson.loads(sent.body)["type"] == "mail.sent"

    async def inject_request(channel: AbstractChannel) -> None:
        exchange = await channel.get_exchange(topology.requests_exchange, ensure=False)
        await publish(exchange, "delivery.request", make_message(b"{}", message_id="x"))

    async def declare_other_queue(channel: AbstractChannel) -> None:
        await channel.declare_queue("events.mail-sender.spy", durable=True)

    refusing = await broker.connect("mail-sender")
    for operation in (inject_request, declare_other_queue):
        assert "ACCESS_REFUSED" in await refused(refusing, operation), operation.__name__


# --- other systems ----------------------------------------------------------------------


async def test_a_publisher_sends_requests_and_reads_only_its_own_event_queues(
    broker: Broker,
) -> None:
    topology = Topology()
    connection = await broker.connect("mail-publisher")
    channel = await open_confirmed_channel(connection)
    # The exchange is looked up passively: declaring it (configure) is not theirs to do.
    requests = await channel.get_exchange(topology.requests_exchange)
    await publish(requests, "delivery.request", make_message(b"{}", message_id="r1"))
    admin = await (await broker.connect_admin()).channel()
    assert (await passive_depth(admin, topology.requests_queue))[0] == 1

    events = await publisher_events(broker, "delivery.*")
    dispatcher = await open_confirmed_channel(await broker.connect("mail-dispatcher"))
    await EventPublisher(dispatcher, topology).publish(DeliveryAccepted(
        delivery_id="r1", account_id=str(uuid.uuid4()), recipients=1))
    [event] = await receive(events)
    assert orjson.loads(event.body)["delivery_id"] == "r1"

    account_id, _ = await account_queue(broker)

    async def publish_job(channel: AbstractChannel) -> None:
        await job_to(channel, account_id)

    async def publish_default_exchange(channel: AbstractChannel) -> None:
        await publish(channel.default_exchange, topology.requests_queue,
                      make_message(b"{}", message_id="x"))

    async def consume_requests(channel: AbstractChannel) -> None:
        queue = await channel.get_queue(topology.requests_queue)
        await queue.consume(ack)

    async def declare_requests_exchange(channel: AbstractChannel) -> None:
        await channel.declare_exchange(topology.requests_exchange, aio_pika.ExchangeType.TOPIC,
                                       durable=True)

    async def declare_someone_elses_queue(channel: AbstractChannel) -> None:
        await channel.declare_queue("events.crm.status", durable=True)

    async def bind_to_jobs(channel: AbstractChannel) -> None:
        queue = await channel.declare_queue(PUBLISHER_QUEUE, durable=True)
        await queue.bind(topology.send_exchange, routing_key=account_id)

    for operation in (publish_job, publish_default_exchange, consume_requests,
                      declare_requests_exchange, declare_someone_elses_queue, bind_to_jobs):
        assert "ACCESS_REFUSED" in await refused(connection, operation), operation.__name__


async def test_ops_reads_purges_and_replays_mail_dead_and_reads_queue_depths(
    broker: Broker,
) -> None:
    topology = Topology()
    account_id, _ = await account_queue(broker)
    dispatcher = await open_confirmed_channel(await broker.connect("mail-dispatcher"))
    dead = await dispatcher.get_exchange(topology.dead_exchange, ensure=False)
    for index in range(3):
        await publish(dead, "delivery.request", make_message(
            b'{"delivery_id": "x"}', message_id=f"x{index}", headers={"x-reason": "test"}))

    connection = await broker.connect("mail-ops")
    channel = await open_confirmed_channel(connection)
    assert (await passive_depth(channel, topology.dead_queue))[0] == 3
    assert (await passive_depth(channel, topology.requests_queue))[0] == 0
    assert (await passive_depth(channel, topology.account_queue(account_id)))[0] == 0

    queue = await channel.get_queue(topology.dead_queue)
    message = await queue.get(timeout=10)
    requests = await channel.get_exchange(topology.requests_exchange, ensure=False)
    await publish(requests, "delivery.request",
                  make_message(message.body, message_id=message.message_id or ""))
    await message.ack()
    await job_to(channel, account_id)  # a job put back into its account's queue
    assert (await passive_depth(channel, topology.requests_queue))[0] == 1
    assert (await passive_depth(channel, topology.account_queue(account_id)))[0] == 1
    await queue.purge()
    assert (await passive_depth(channel, topology.dead_queue))[0] == 0

    # The console and the HTTP API, for queue depths (tag `management`).
    async with httpx.AsyncClient(base_url=str(broker.management.base_url), timeout=10,
                                 auth=(broker.user("mail-ops"), broker.password("mail-ops"))
                                 ) as ops_api:
        response = await ops_api.get(f"/queues/{broker.vhost}")
        assert response.status_code == 200
        assert topology.dead_queue in {queue["name"] for queue in response.json()}

    async def consume_requests(channel: AbstractChannel) -> None:
        queue = await channel.get_queue(topology.requests_queue)
        await queue.consume(ack)

    async def get_job(channel: AbstractChannel) -> None:
        await (await channel.get_queue(topology.account_queue(account_id))).get(fail=False)

    async def declare_queue(channel: AbstractChannel) -> None:
        await channel.declare_queue("mail.ops.scratch", durable=True)

    for operation in (consume_requests, get_job, declare_queue):
        assert "ACCESS_REFUSED" in await refused(connection, operation), operation.__name__


async def dead_request(broker: Broker, delivery_id: str) -> None:
    """A request the dispatcher refused, in mail.dead (with x-original-exchange)."""
    channel = await open_confirmed_channel(await broker.connect("mail-dispatcher"))
    await DeadLetters(channel, Topology()).send(
        orjson.dumps({"delivery_id": delivery_id}), delivery_id,
        Rejection(INVALID_REQUEST, "test", delivery_id))


async def test_the_ops_cli_lists_and_replays_mail_dead_as_mail_ops(broker: Broker) -> None:
    topology = Topology()
    await dead_request(broker, "r1")
    connection = await broker.connect("mail-ops")  # services/ops/cli.py: a plain connection
    async with ops_dead.DeadQueue(connection, topology) as dead:
        assert [letter.message_id for letter in dead.letters] == ["r1"]
    outcomes, _ = await ops_dead.replay(connection, topology,
                                        ops_dead.selector(True, [], []), dry_run=False)
    assert [outcome.action for outcome in outcomes] == ["replayed"], outcomes
    assert (await passive_depth(await connection.channel(), topology.requests_queue))[0] == 1
    assert (await passive_depth(await connection.channel(), topology.dead_queue))[0] == 0


async def test_the_ops_cli_pauses_an_account_as_mail_ops(
    broker: Broker, pool: asyncpg.Pool, new_account: Callable[[], Awaitable[str]],
) -> None:
    account_id = await new_account()
    events = await publisher_events(broker, "account.*")
    connection = await broker.connect("mail-ops")
    result = await ops_accounts.set_paused(pool, connection, Topology(), account_id, True,
                                           "tester")
    assert result.changed and result.events_published >= 1
    async with events.iterator() as messages, asyncio.timeout(10):
        async for message in messages:
            await message.ack()
            event = orjson.loads(message.body)
            if event["account_id"] == account_id:
                assert event["type"] == "account.paused"
                break


async def test_the_ops_cli_renews_a_message_read_many_times_as_mail_ops(broker: Broker) -> None:
    topology = Topology()
    await dead_request(broker, "r1")
    connection = await broker.connect("mail-ops")
    for _ in range(ops_dead.RENEW_AT + 1):
        async with ops_dead.DeadQueue(connection, topology) as dead:
            assert [letter.message_id for letter in dead.letters] == ["r1"]
    async with ops_dead.DeadQueue(connection, topology) as dead:
        assert dead.letters[0].delivery_count < ops_dead.RENEW_AT


async def test_the_ops_cli_reads_account_queue_depths_as_mail_ops(
    broker: Broker, pool: asyncpg.Pool, new_account: Callable[[], Awaitable[str]],
) -> None:
    account_id = await new_account()
    config = await open_confirmed_channel(await broker.connect("mail-config"))
    await AccountQueues(config, Topology()).declare(account_id)
    await job_to(config, account_id)
    connection = await broker.connect("mail-ops")
    [status] = await ops_accounts.list_accounts(pool, connection, Topology(), [account_id])
    assert status.queue_error is None, status.queue_error
    assert status.queue_depth == 1


# --- the real processes -----------------------------------------------------------------


def service(module: str, amqp_url: str, log_path: Path, **env: str) -> ServiceProcess:
    """`python -m <module>` as one of the definitions' users."""
    return ServiceProcess(module, {"MAIL_AMQP_URL": amqp_url, "MAIL_JWT_SECRET": JWT_SECRET,
                                   "MAIL_FERNET_KEYS": KEY, **env}, log_path)


@pytest.fixture
async def processes(pool: asyncpg.Pool) -> AsyncIterator[list[ServiceProcess]]:
    await migrate_all(pool)
    async with pool.acquire() as db:
        await migrate(db, "sender", SENDER_MIGRATIONS)
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        await process.stop()


@pytest.mark.timeout(240)
async def test_the_services_run_as_their_own_users(
    broker: Broker, processes: list[ServiceProcess], tmp_path: Path,
) -> None:
    """config_svc, the dispatcher and the sender start (/readyz) as their users; an account
    created through the API gets its queue (config_svc) and its consumer (the sender, told by
    the account.created event on its server-named queue)."""
    config = service("services.config_svc", broker.url("mail-config"),
                            tmp_path / "config_svc.log")
    dispatcher = service("services.dispatcher", broker.url("mail-dispatcher"),
                                tmp_path / "dispatcher.log")
    # The sender serves every live account of the shared test database: a slow reconcile,
    # a name of its own; its account queues land in this test's vhost only.
    sender = service("services.sender", broker.url("mail-sender"),
                            tmp_path / "sender.log", MAIL_REPLICA_ID=f"defs-{broker.suffix}",
                            MAIL_RECONCILE_S="3600")
    processes.extend([config, dispatcher, sender])
    await asyncio.gather(config.start(timeout=60), dispatcher.start(timeout=60),
                         sender.start(timeout=180))

    headers = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'admin', [ADMIN_ROLE])}"}
    async with httpx.AsyncClient(base_url=config.base_url, timeout=10) as api:
        response = await api.post("/v1/accounts", json=account_body(), headers=headers)
        assert response.status_code == 201, response.text
        account_id = response.json()["id"]
        admin = await (await broker.connect_admin()).channel()
        queue = Topology().account_queue(account_id)

        async def consumed() -> bool:
            return (await passive_depth(admin, queue))[1] == 1

        await eventually(consumed, timeout=30, interval=0.1)
        response = await api.delete(f"/v1/accounts/{account_id}", headers=headers)
        assert response.status_code == 204, response.text

    for process in processes:
        assert await process.stop() == 0, process.log()
    assert "ACCESS_REFUSED" not in "".join(process.log() for process in processes)


class DispatcherRefused(Exception):
    """The dispatcher process logged an ACCESS_REFUSED."""


@pytest.mark.timeout(120)
async def test_a_request_from_another_system_is_fanned_out_by_the_real_dispatcher(
    broker: Broker, processes: list[ServiceProcess], pool: asyncpg.Pool, tmp_path: Path,
    new_account: Callable[[], Awaitable[str]],
) -> None:
    account_id = await new_account()
    config = await open_confirmed_channel(await broker.connect("mail-config"))
    await AccountQueues(config, Topology()).declare(account_id)
    dispatcher = service("services.dispatcher", broker.url("mail-dispatcher"),
                                tmp_path / "dispatcher.log")
    processes.append(dispatcher)
    await dispatcher.start(timeout=60)

    body = request_body(account_id=account_id)
    publisher = await open_confirmed_channel(await broker.connect("mail-publisher"))
    await publish(await publisher.get_exchange(Topology().requests_exchange),
                  "delivery.request",
                  make_message(orjson.dumps(body), message_id=body["delivery_id"]))

    async def settled() -> bool:
        if "ACCESS_REFUSED" in dispatcher.log():
            raise DispatcherRefused(dispatcher.log()[-2000:])
        return bool(await pool.fetchval(
            "SELECT accepted_at IS NOT NULL FROM deliveries WHERE delivery_id = $1",
            body["delivery_id"]))

    await eventually(settled, timeout=30, interval=0.1)
    admin = await (await broker.connect_admin()).channel()
    assert (await passive_depth(admin, Topology().account_queue(account_id)))[0] == 2
