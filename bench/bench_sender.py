"""The sender as a real process against Postfix's smtp-sink: throughput, pacing, latency.

Needs a running stack: `make bench` starts one, or, by hand from the repo root,
`set -a; . .run/stack/env; set +a; .venv/bin/python bench/bench_sender.py [--quick]`.
smtp-sink is installed (Debian's postfix package, "No configuration") when it is missing.

1. throughput: one account (interval 0), one delivery request of 5,000 recipients (~2 KB
   mails), from the request's publish to the `delivery.completed` event (the last 250 is
   recorded just before it), through the real dispatcher and sender processes. Baseline: a bare
   aiosmtplib loop sending the same bytes over one persistent connection to the same smtp-sink
   (connect once, then `sendmail` per mail), run before and after. CPU of the sender process
   per mail from /proc/<pid>/stat.
1b. where that time goes: the sender's steps for one mail (its own functions: decode, ledger
   read, compose, lease, SMTP, record, event, and the broker's ack -> next delivery), each
   timed alone here, against the wall time per mail seen in 1.
2. pacing: 500 accounts at 1,000 ms in one sender process, each with a delivery longer than
   the run, published once the sender is ready; after every request is accepted and a warm-up
   of 5 s, 60 s are measured from the ledger: sends per second against the ideal 500/s, and
   per account the spacing between consecutive `sent` records
   (`delivery_recipients.updated_at`, taken right after each 250): the spacing includes the
   SMTP transaction, so it is >= the pause the sender keeps. Peak RSS of the sender (VmHWM).
3. latency: 200 one-recipient requests in turn to one account (interval 0), each published
   after the previous one completed: publish -> `mail.sent`, and publish -> ledger row `sent`.
   Baselines: one bare SMTP transaction on an open connection, and one bare broker hop
   (persistent publish with confirm to a quorum queue -> consumer), measured in the same run.

`--quick` shrinks each (1,000 mails; 100 accounts for 15 s; 50 requests); `--wait-quiet S`
waits up to S seconds before each for the machine to be idle (other work skews every figure;
the CPU lines show how much of it there was). Prints figures only and exits non-zero only on
errors. What it creates (accounts, their queues and runtime
rows, deliveries, processes, smtp-sink) is removed at the end, on errors too; the accounts
it found live are soft-deleted for the run (a sender serves every live account) and restored.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no PYTHONPATH

import aio_pika
import aiosmtplib
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from bench.procstats import cpu_seconds, proc_status
from bench.service_process import (
    REQUIRED_ENV,
    BenchError,
    ServiceProcess,
    metric_values,
    run_benchmark,
)
from bench.smtp_sink import SmtpSink, SmtpSinkError
from services.config_svc.main import MIGRATIONS as ACCOUNTS_MIGRATIONS
from services.dispatcher.main import MIGRATIONS as DISPATCHER_MIGRATIONS
from services.sender import store
from services.sender.delivery.compose import Composer, DeliveryContent, envelope_address
from services.sender.main import MIGRATIONS as SENDER_MIGRATIONS
from shared.crypto import SecretBox
from shared.db import create_pool, migrate
from shared.messages import MailSent, SendJob
from shared.smtp import SmtpEndpoint, SmtpSession, client_ssl_context
from shared.topology import (
    Topology,
    make_message,
    open_confirmed_channel,
    publish,
    publish_many,
)

JWT_SECRET = "bench-sender-jwt-secret-of-32-bytes!"
FROM_ADDRESS = "news@shop.example.com"
FROM_NAME = "Example Shop"
STEP_TIMEOUT_S = 600  # the longest wait for any one event, whatever the size
WARM_UP_MAILS = 100


@dataclass(frozen=True)
class Sizes:
    mails: int  # 1. recipients of the throughput request
    accounts: int  # 2. accounts paced at once
    pacing_s: float  # 2. measured window
    warm_up_s: float  # 2. after every request is accepted, before the window
    interval_ms: int  # 2. each account's send_interval_ms
    requests: int  # 3. one-recipient requests in turn


FULL = Sizes(mails=5_000, accounts=500, pacing_s=60, warm_up_s=5, interval_ms=1_000,
             requests=200)
QUICK = Sizes(mails=1_000, accounts=100, pacing_s=15, warm_up_s=5, interval_ms=1_000,
              requests=50)
# 2. Mails per account: the window, the warm-up and a margin for the fan-out of every request
# (30-40 s for 500 requests while the sender sends; the accounts accepted first start first).
PACING_MARGIN_S = 50

SUBJECT = "{{name}} 様 11月のお知らせ【{{plan}}プラン】"
TEXT = (
    "{{name}} 様\n\nいつもご利用いただきありがとうございます。\nご契約中のプラン: {{plan}}\n\n"
    + "11月のキャンペーンのお知らせです。詳しくはウェブサイトをご覧ください。\n" * 3
    + "\n-- \nExample Shop https://shop.example.com/\n"
)
HTML = (
    "<html><body><p>{{name}} 様</p><p>いつもご利用いただきありがとうございます。</p>\n"
    "<p>ご契約中のプラン: <b>{{plan}}</b></p>\n"
    + "<p>11月のキャンペーンのお知らせです。<a href=\"https://shop.example.com/\">"
    "詳しくはこちら</a></p>\n" * 2
    + "</body></html>\n"
)
HEADERS = {"X-Campaign": "2026-11"}
PLANS = ("gold", "silver", "bronze", "platinum")


# -- small helpers --------------------------------------------------------------------------


def recipient(i: int) -> dict[str, Any]:
    return {"email": f"user{i:06d}@example.com", "name": f"山田 太郎 {i}",
            "vars": {"plan": PLANS[i % len(PLANS)]}}


def request_body(account_id: str, count: int, tag: str) -> dict[str, Any]:
    return {"delivery_id": f"bench-sender-{tag}-{uuid.uuid4().hex[:12]}",
            "account_id": account_id, "requested_by": "bench", "subject": SUBJECT,
            "text": TEXT, "html": HTML, "headers": HEADERS, "metadata": {"bench": tag},
            "recipients": [recipient(i) for i in range(count)]}


def composed_mails(count: int) -> list[tuple[str, bytes]]:
    """(recipient, bytes) of the mails the sender writes for `request_body(..., count)`."""
    composer = Composer(DeliveryContent(
        from_address=FROM_ADDRESS, from_name=FROM_NAME, reply_to=None, subject=SUBJECT,
        text=TEXT, html=HTML, headers=HEADERS))
    out = []
    for i in range(count):
        r = recipient(i)
        out.append((r["email"], composer.compose(email=r["email"], name=r["name"],
                                                 vars=r["vars"]).data))
    return out


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already in user
    idle = fields[3] + fields[4]  # idle + iowait
    return (total - idle) / os.sysconf("SC_CLK_TCK"), total / os.sysconf("SC_CLK_TCK")


def stack_pids() -> dict[str, list[int]]:
    """The broker's and the database's processes of the stack in $MAIL_STACK_DIR, if any:
    RabbitMQ's process group (its server.pid leads it), the postmaster and its children."""
    stack = os.environ.get("MAIL_STACK_DIR")
    if not stack:
        return {}
    found: dict[str, list[int]] = {"broker": [], "postgres": []}
    try:
        rabbit = int(Path(stack, "rabbitmq", "server.pid").read_text().split()[0])
        postmaster = int(Path(stack, "postgres", "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        pid, ppid, group = int(entry), int(fields[1]), int(fields[2])
        if group == rabbit:
            found["broker"].append(pid)
        elif pid == postmaster or ppid == postmaster:
            found["postgres"].append(pid)
    return found


def group_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):  # a process gone meanwhile
            total += cpu_seconds(pid)
    return total


@dataclass
class CpuMeter:
    """CPU of the run's processes (by group) and of the whole machine between `start` and
    `stop`; what the machine did besides them is other work on this machine."""

    groups: dict[str, list[int]]
    began: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0

    @classmethod
    def of(cls, **processes: int | list[int]) -> "CpuMeter":
        groups = {name: pids if isinstance(pids, list) else [pids]
                  for name, pids in processes.items()}
        groups.update(stack_pids())
        groups["bench"] = [os.getpid()]
        return cls(groups)

    def _read(self) -> dict[str, float]:
        values = {name: group_cpu(pids) for name, pids in self.groups.items()}
        values["machine busy"], values["machine total"] = machine_cpu()
        return values

    def start(self) -> "CpuMeter":
        self.began = self._read()
        self.wall = time.perf_counter()
        return self

    def stop(self) -> "CpuMeter":
        now = self._read()
        self.used = {name: now[name] - self.began[name] for name in now}
        self.wall = time.perf_counter() - self.wall
        return self

    def cores(self, name: str) -> float:
        """Average cores used over the measured time."""
        return self.used[name] / self.wall if self.wall else math.nan

    def summary(self) -> str:
        """'sender 0.32, broker 0.61, ... other work 0.05 cores of 2'."""
        cores = os.cpu_count() or 1
        busy = self.used["machine busy"] / self.used["machine total"] * cores \
            if self.used["machine total"] else math.nan
        parts = [f"{name} {self.cores(name):.2f}" for name in self.groups]
        ours = sum(self.cores(name) for name in self.groups)
        parts.append(f"other work on the machine {max(0.0, busy - ours):.2f}")
        return f"{', '.join(parts)} (busy {busy:.2f} of {cores} cores)"


async def busy_share(seconds: float = 2.0) -> float:
    """Share of the machine's CPU busy over the next `seconds`."""
    busy, total = machine_cpu()
    await asyncio.sleep(seconds)
    busy2, total2 = machine_cpu()
    return (busy2 - busy) / (total2 - total) if total2 > total else 0.0


async def wait_quiet(max_wait_s: float, what: str, threshold: float = 0.15) -> float:
    """Waits (up to `max_wait_s`) until the machine's busy share over 2 s is below
    `threshold`: on a shared machine, other work skews every figure. Returns the last share."""
    deadline = time.monotonic() + max_wait_s
    while True:
        share = await busy_share()
        if share < threshold or time.monotonic() > deadline:
            if share >= threshold:
                print(f"{what}: the machine is {share:.0%} busy with other work; measuring "
                      "anyway (the figures may suffer; see --wait-quiet)", file=sys.stderr)
            return share
        print(f"{what}: the machine is {share:.0%} busy with other work; waiting ...",
              file=sys.stderr)


def histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative counts by upper bound of a Prometheus histogram (no labels)."""
    counts = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            key = math.inf if bound == "+Inf" else float(bound)
            # summed: the text may be several replicas' expositions one after the other
            counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def histogram_quantile(before: dict[float, float], after: dict[float, float],
                       q: float) -> tuple[float, float]:
    """(the bound the q-quantile lies under, how many were observed) between two readings."""
    bounds = sorted(after)
    delta = [after[b] - before.get(b, 0.0) for b in bounds]
    total = delta[-1] if delta else 0.0
    for bound, count in zip(bounds, delta, strict=True):
        if total and count >= q * total:
            return bound, total
    return math.nan, total


# -- events ---------------------------------------------------------------------------------


@dataclass
class Arrival:
    perf: float
    event: dict[str, Any]


class EventWatch:
    """A private queue on `mail.events`: futures for awaited events, and the trouble seen."""

    TROUBLE = ("delivery.rejected", "mail.failed", "mail.deferred", "account.paused",
               "account.throttled")

    def __init__(self, channel: AbstractChannel, topology: Topology) -> None:
        self._channel = channel
        self._topology = topology
        self._queue: AbstractQueue | None = None
        self._waiting: dict[tuple[str, str], asyncio.Future[Arrival]] = {}
        self.trouble: list[dict[str, Any]] = []

    async def start(self) -> None:
        self._queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        for key in ("delivery.accepted", "delivery.completed", *self.TROUBLE):
            await self.bind(key)
        await self._queue.consume(self._on_message, no_ack=True)

    async def bind(self, key: str) -> None:
        assert self._queue is not None
        await self._queue.bind(self._topology.events_exchange, routing_key=key)

    async def unbind(self, key: str) -> None:
        assert self._queue is not None
        await self._queue.unbind(self._topology.events_exchange, routing_key=key)

    def expect(self, kind: str, delivery_id: str) -> asyncio.Future[Arrival]:
        future = asyncio.get_running_loop().create_future()
        self._waiting[(kind, delivery_id)] = future
        return future

    def forget(self) -> None:
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        arrival = Arrival(time.perf_counter(), orjson.loads(message.body))
        kind = arrival.event.get("type", "")
        if kind in self.TROUBLE:
            self.trouble.append(arrival.event)
        future = self._waiting.pop((kind, arrival.event.get("delivery_id", "")), None)
        if future is not None and not future.done():
            future.set_result(arrival)


# -- the run's context: connections, stack pieces, what to clean up -------------------------


class Bench:
    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.topology = Topology()  # the processes use the contract's names
        self.fernet_key = SecretBox.generate_key()
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.channel: AbstractChannel | None = None
        self.pool: asyncpg.Pool | None = None
        self.events: EventWatch | None = None
        # One SMTP session per account, all open at once in the pacing run.
        self.sink = SmtpSink(max_concurrency=max(FULL.accounts, sizes.accounts) + 100)
        self.dispatcher: ServiceProcess | None = None
        self.senders: list[ServiceProcess] = []
        self.accounts: list[str] = []
        self.deliveries: list[str] = []
        self.queues: list[str] = []
        self.set_aside: list[str] = []  # live accounts found at the start, soft-deleted

    # -- set-up and clean-up --------------------------------------------------------------

    async def set_up(self) -> None:
        amqp_url, dsn = (os.environ[name] for name in REQUIRED_ENV)
        self.connection = await aio_pika.connect(
            amqp_url, timeout=10, client_properties={"connection_name": "bench sender"})
        self.channel = await open_confirmed_channel(self.connection)
        self.pool = await create_pool(dsn, max_size=4)
        async with self.pool.acquire() as db:
            for service, folder in (("config_svc", ACCOUNTS_MIGRATIONS),
                                    ("dispatcher", DISPATCHER_MIGRATIONS),
                                    ("sender", SENDER_MIGRATIONS)):
                await migrate(db, service, folder)
        await self.topology.declare(self.channel)
        self.events = EventWatch(self.channel, self.topology)
        await self.events.start()
        # A sender serves every live account: the ones found here wait out the run.
        self.set_aside = [str(row["id"]) for row in await self.pool.fetch(
            "UPDATE accounts SET deleted_at = now() WHERE deleted_at IS NULL RETURNING id")]
        self.sink.start()
        self.dispatcher = ServiceProcess("dispatcher", {"MAIL_JWT_SECRET": JWT_SECRET})
        await self.dispatcher.start(timeout=60)

    async def clean_up(self) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            *((f"stop the {p.name}", p.stop) for p in reversed(self.senders)),
            *([("stop the dispatcher", self.dispatcher.stop)] if self.dispatcher else []),
            ("stop smtp-sink", self._stop_sink),
            ("delete the queues", self._delete_queues),
            ("delete the rows", self._delete_rows),
            ("close the connections", self._close),
        ]
        for what, step in steps:
            try:
                await step()
            except Exception as error:  # keep cleaning: report, do not stop half-way
                print(f"bench_sender: clean-up: {what} failed: {error!r}", file=sys.stderr)

    async def _stop_sink(self) -> None:
        self.sink.stop()

    async def _delete_queues(self) -> None:
        if self.channel is None or self.channel.is_closed:
            return
        for name in self.queues:
            await self.channel.queue_delete(name)

    async def _delete_rows(self) -> None:
        if self.pool is None:
            return
        async with self.pool.acquire() as db, db.transaction():
            await db.execute("DELETE FROM deliveries WHERE delivery_id = ANY($1)",
                             self.deliveries)
            # Events no relay published (the steps of 1b write them with no sender running).
            await db.execute("DELETE FROM sender_outbox WHERE body->>'delivery_id' = ANY($1)",
                             self.deliveries)
            await db.execute("DELETE FROM account_runtime WHERE account_id = ANY($1::uuid[])",
                             self.accounts)
            await db.execute("DELETE FROM accounts WHERE id = ANY($1::uuid[])", self.accounts)
            await db.execute("UPDATE accounts SET deleted_at = NULL WHERE id = ANY($1::uuid[])",
                             self.set_aside)
            # A sender that did not stop gracefully leaves its heartbeat row behind.
            await db.execute("DELETE FROM sender_replicas WHERE replica_id = ANY($1)",
                             [p.env["MAIL_REPLICA_ID"] for p in self.senders])

    async def _close(self) -> None:
        if self.events is not None:
            self.events.forget()
        if self.pool is not None:
            await self.pool.close()
        if self.connection is not None:
            await self.connection.close()

    # -- accounts, processes, requests ----------------------------------------------------

    async def create_accounts(self, count: int, interval_ms: int,
                              served: bool = True) -> list[str]:
        """Accounts on smtp-sink; `served=False`: created soft-deleted, so no sender serves
        them (for timing the sender's steps here)."""
        assert self.pool is not None and self.channel is not None
        tag = uuid.uuid4().hex[:8]
        rows = await self.pool.fetch(
            "INSERT INTO accounts (name, from_address, from_name, smtp_host, smtp_port, tls, "
            "smtp_auth, send_interval_ms, created_by, deleted_at) "
            "SELECT 'bench sender ' || $1 || ' ' || g, $2, $3, $4, $5, 'none', false, $6, "
            "'bench', CASE WHEN $8 THEN NULL ELSE now() END "
            "FROM generate_series(1, $7) AS g RETURNING id",
            tag, FROM_ADDRESS, FROM_NAME, self.sink.host, self.sink.port, interval_ms, count,
            served)
        ids = [str(row["id"]) for row in rows]
        self.accounts += ids
        self.queues += [self.topology.account_queue(account_id) for account_id in ids]
        for account_id in ids:  # before any publish (the dispatcher would declare it too)
            await self.topology.declare_account_queue(self.channel, account_id)
        return ids

    async def retire_accounts(self, ids: list[str]) -> None:
        """Soft-deleted: the next sender process does not serve them."""
        assert self.pool is not None
        await self.pool.execute(
            "UPDATE accounts SET deleted_at = now() WHERE id = ANY($1::uuid[])", ids)

    async def start_sender(self, timeout: float, db_pool: int | None = None) -> ServiceProcess:
        sender = ServiceProcess("sender", {
            "MAIL_FERNET_KEYS": self.fernet_key,
            "MAIL_REPLICA_ID": f"bench-sender-{uuid.uuid4().hex[:8]}",
            **({"MAIL_DB_POOL_MAX": str(db_pool)} if db_pool else {})})
        self.senders.append(sender)
        await sender.start(timeout)
        return sender

    async def publish_request(self, body: dict[str, Any]) -> None:
        assert self.channel is not None
        self.deliveries.append(body["delivery_id"])
        exchange = await self.channel.get_exchange(self.topology.requests_exchange,
                                                   ensure=False)
        await publish(exchange, "delivery.request",
                      make_message(orjson.dumps(body), message_id=body["delivery_id"]))

    async def publish_requests(self, bodies: list[dict[str, Any]]) -> None:
        assert self.channel is not None
        self.deliveries += [body["delivery_id"] for body in bodies]
        exchange = await self.channel.get_exchange(self.topology.requests_exchange,
                                                   ensure=False)

        def messages() -> Iterator[tuple[str, aio_pika.Message]]:
            for body in bodies:
                yield "delivery.request", make_message(orjson.dumps(body),
                                                       message_id=body["delivery_id"])

        await publish_many(exchange, messages(), window=100)

    def check_alive(self) -> None:
        for process in (self.dispatcher, *self.senders):
            if process is not None and process.process is not None and not process.stopped:
                process.check_alive()
        self.sink.check_alive()

    def check_trouble(self) -> None:
        assert self.events is not None
        if self.events.trouble:
            kinds = sorted({event["type"] for event in self.events.trouble})
            first = self.events.trouble[0]
            raise BenchError(f"unexpected events {kinds}; the first: "
                             f"{orjson.dumps(first).decode()[:600]}")

    async def wait(self, future: asyncio.Future[Arrival], what: str,
                   timeout: float = STEP_TIMEOUT_S) -> Arrival:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(future), 1.0)
            except TimeoutError:
                self.check_alive()
                self.check_trouble()
                if time.monotonic() > deadline:
                    raise BenchError(f"no {what} within {timeout:.0f} s") from None

    async def sent_count(self, delivery_ids: list[str]) -> int:
        assert self.pool is not None
        return await self.pool.fetchval(
            "SELECT count(*) FROM delivery_recipients WHERE delivery_id = ANY($1) "
            "AND state = 'sent'", delivery_ids)


# -- 1. throughput --------------------------------------------------------------------------


@dataclass
class BareRun:
    mails: int
    seconds: float
    client_cpu_s: float
    latencies_s: list[float]

    @property
    def rate(self) -> float:
        return self.mails / self.seconds


async def bare_loop(sink: SmtpSink, mails: list[tuple[str, bytes]], warm_up: int) -> BareRun:
    """Connect once, then one `sendmail` (MAIL, RCPT, DATA) per mail, each awaited."""
    smtp = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, start_tls=False, timeout=30)
    await smtp.connect()
    try:
        for address, data in mails[:warm_up]:
            await smtp.sendmail(FROM_ADDRESS, [address], data)
        latencies = []
        cpu, started = time.process_time(), time.perf_counter()
        for address, data in mails:
            before = time.perf_counter()
            await smtp.sendmail(FROM_ADDRESS, [address], data)
            latencies.append(time.perf_counter() - before)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await smtp.quit()
        smtp.close()
    return BareRun(len(mails), seconds, cpu, latencies)


async def prefetch_one_queue(bench: Bench, kind: str,
                             count: int) -> tuple[AbstractChannel, AbstractQueue]:
    """A quorum queue with the account queues' arguments holding `count` messages (bodies
    "0", "1", ...), and a prefetch-1 channel to consume it."""
    assert bench.connection is not None and bench.channel is not None
    name = f"bench-sender-{kind}-{uuid.uuid4().hex[:8]}"
    bench.queues.append(name)
    consuming = await bench.connection.channel()
    await consuming.set_qos(prefetch_count=1)
    queue = await consuming.declare_queue(
        name, durable=True, arguments=bench.topology.account_queue_arguments())
    await publish_many(bench.channel.default_exchange, (
        (name, make_message(str(i).encode(), message_id=f"{kind}-{i}")) for i in range(count)))
    return consuming, queue


async def prefetch_one_ceiling(bench: Bench, mails: list[tuple[str, bytes]],
                               commit_on: str | None) -> float:
    """Mails/s of the least a prefetch-1 consumer must do per mail: take a job from a quorum
    queue with the account queues' arguments, send it over one open aiosmtplib connection, ack
    it after the 250 (and, with `commit_on`, an account, after one committed UPDATE of its
    runtime row, as an outcome needs)."""
    assert bench.pool is not None
    jobs = mails[:WARM_UP_MAILS] + mails
    consuming, queue = await prefetch_one_queue(bench, "ceiling", len(jobs))
    smtp = aiosmtplib.SMTP(hostname=bench.sink.host, port=bench.sink.port, start_tls=False,
                           timeout=30)
    await smtp.connect()
    handled: list[float] = []
    done = asyncio.get_running_loop().create_future()

    async def on_message(message: AbstractIncomingMessage) -> None:
        address, data = jobs[int(message.body)]
        await smtp.sendmail(FROM_ADDRESS, [address], data)
        if commit_on:  # a row really written: a commit that flushes the WAL
            await held.execute("UPDATE account_runtime SET interval_ms = interval_ms "
                               "WHERE account_id = $1", commit_on)
        await message.ack()
        handled.append(time.perf_counter())
        if len(handled) == len(jobs) and not done.done():
            done.set_result(None)

    try:
        async with bench.pool.acquire() as held:
            await queue.consume(on_message)
            await asyncio.wait_for(done, STEP_TIMEOUT_S)
    finally:
        await consuming.close()
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await smtp.quit()
        smtp.close()
    return len(mails) / (handled[-1] - handled[WARM_UP_MAILS - 1])


async def throughput(bench: Bench, account_id: str, sender: ServiceProcess) -> float:
    assert bench.events is not None and bench.dispatcher is not None and bench.pool is not None
    count = bench.sizes.mails
    mails = composed_mails(count)
    size = sum(len(data) for _, data in mails) / count

    print(f"1. throughput: {count:,} mails ...", file=sys.stderr)
    bare_before = await bare_loop(bench.sink, mails, WARM_UP_MAILS)

    # Warm-up: the sender's SMTP session, database connections and code paths.
    warm = request_body(account_id, WARM_UP_MAILS, "warm")
    done = bench.events.expect("delivery.completed", warm["delivery_id"])
    await bench.publish_request(warm)
    await bench.wait(done, "delivery.completed of the warm-up")

    body = request_body(account_id, count, "throughput")
    delivery_id = body["delivery_id"]
    accepted = bench.events.expect("delivery.accepted", delivery_id)
    completed = bench.events.expect("delivery.completed", delivery_id)
    metrics_before = await sender.metrics("mail_sender_send_seconds_sum",
                                          "mail_sender_send_seconds_count")
    cpu = CpuMeter.of(sender=sender.pid, dispatcher=bench.dispatcher.pid).start()
    wall, started = time.time(), time.perf_counter()
    await bench.publish_request(body)
    confirmed = time.perf_counter()
    accepted_at = (await bench.wait(accepted, "delivery.accepted")).perf
    arrival = await bench.wait(completed, "delivery.completed")
    cpu.stop()
    seconds = arrival.perf - started
    metrics_after = await sender.metrics("mail_sender_send_seconds_sum",
                                         "mail_sender_send_seconds_count")
    bench.check_trouble()
    sent = await bench.sent_count([delivery_id])
    if sent != count or arrival.event.get("sent") != count:
        raise BenchError(f"{sent} recipients sent (event: {arrival.event.get('sent')}), "
                         f"not {count}")
    row = await bench.pool.fetchrow(
        "SELECT extract(epoch FROM min(updated_at))::float8 AS first, "
        "extract(epoch FROM max(updated_at))::float8 AS last "
        "FROM delivery_recipients WHERE delivery_id = $1", delivery_id)

    bare_after = await bare_loop(bench.sink, mails, WARM_UP_MAILS)
    baseline = max(bare_before.rate, bare_after.rate)
    ceiling = await prefetch_one_ceiling(bench, mails, commit_on=None)
    ceiling_commit = await prefetch_one_ceiling(bench, mails, commit_on=account_id)
    rate = count / seconds
    sends = metrics_after["mail_sender_send_seconds_count"] - \
        metrics_before["mail_sender_send_seconds_count"]
    smtp_s = metrics_after["mail_sender_send_seconds_sum"] - \
        metrics_before["mail_sender_send_seconds_sum"]
    last_250_s = row["last"] - wall
    send_phase = (count - 1) / (row["last"] - row["first"]) if row["last"] > row["first"] else 0

    print(f"\n## 1. throughput: one account, interval 0, {count:,} mails of {size:,.0f} bytes")
    print(f"baseline: bare aiosmtplib loop, one connection   {bare_before.rate:>8,.0f} mails/s "
          f"(before)  {bare_after.rate:>6,.0f} mails/s (after)")
    print(f"          its per-mail SMTP transaction, p50      "
          f"{percentile(bare_before.latencies_s, 50) * 1e3:>8.2f} ms; client CPU "
          f"{bare_before.client_cpu_s / count * 1e3:.2f} ms/mail")
    print(f"sender:   publish -> delivery.completed          {rate:>8,.0f} mails/s "
          f"({seconds:.2f} s)")
    print(f"          = {rate / baseline:.1%} of the faster bare run (no goal: prefetch 1 and "
          f"the ack after the record bound it, see the ceilings)")
    print(f"ceiling:  prefetch 1 (quorum queue) -> the same SMTP loop -> ack, nothing else "
          f"{ceiling:>6,.0f} mails/s = {ceiling / baseline:.1%}")
    print(f"          the same with one committed UPDATE before each ack "
          f"{ceiling_commit:>10,.0f} mails/s = {ceiling_commit / baseline:.1%}; the sender "
          f"reaches {rate / ceiling_commit:.0%} of this (goal: >= 80%)")
    print(f"          publish -> last 250 in the ledger      {last_250_s:>8.2f} s; first "
          f"-> last `sent` row {send_phase:,.0f} mails/s")
    print(f"          publish -> confirm {confirmed - started:.3f} s; -> delivery.accepted "
          f"{accepted_at - started:.2f} s (the fan-out overlaps the sending)")
    print(f"          SMTP time inside the sender            "
          f"{smtp_s / max(sends, 1) * 1e3:>8.2f} ms/mail (MAIL..250, its own histogram), "
          f"{smtp_s / seconds:.0%} of the wall time")
    print(f"          sender CPU                             "
          f"{cpu.used['sender'] / count * 1e3:>8.2f} ms/mail ({cpu.cores('sender'):.2f} "
          f"cores); dispatcher {cpu.used['dispatcher'] / count * 1e3:.2f} ms/mail")
    print(f"          = {cpu.used['sender'] / bare_before.client_cpu_s:.1f}x the bare client's "
          f"CPU per mail (goal: <= 2.5x)")
    print(f"          sender RSS {proc_status(sender.pid)['VmRSS'] / 1024:.0f} MB; CPU in cores: "
          f"{cpu.summary()}")
    return rate


# -- 1b. where one mail's time goes ----------------------------------------------------------


class StepTimer:
    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self._last = 0.0

    def begin(self) -> None:
        self._last = time.perf_counter()

    def mark(self, step: str) -> None:
        now = time.perf_counter()
        self.times.setdefault(step, []).append(now - self._last)
        self._last = now


async def consume_cycle(bench: Bench, count: int) -> float:
    """Seconds per message of a prefetch-1 consumer that acks each message at once, on a
    quorum queue with the account queues' arguments: the broker's part of each mail."""
    consuming, queue = await prefetch_one_queue(bench, "cycle", count + 20)
    times: list[float] = []
    done = asyncio.get_running_loop().create_future()

    async def on_message(message: AbstractIncomingMessage) -> None:
        times.append(time.perf_counter())
        await message.ack()
        if len(times) == count + 20 and not done.done():
            done.set_result(None)

    try:
        await queue.consume(on_message)
        await asyncio.wait_for(done, 120)
    finally:
        await consuming.close()
    return (times[-1] - times[19]) / count  # the first 20 warm up


async def steps(bench: Bench, observed_rate: float) -> None:
    """The sender's loop for one mail, step by step, with its own functions, timed alone in
    this process on the same stack (an account no sender serves, its own delivery)."""
    assert bench.pool is not None and bench.channel is not None
    pool = bench.pool
    count = 500 if bench.sizes is FULL else 200
    print(f"1b. the sender's steps, {count} times each ...", file=sys.stderr)
    [account_id] = await bench.create_accounts(1, 0, served=False)
    await store.ensure_runtime(pool, account_id)
    delivery_id = f"bench-sender-steps-{uuid.uuid4().hex[:12]}"
    bench.deliveries.append(delivery_id)
    async with pool.acquire() as db, db.transaction():
        await db.execute(
            "INSERT INTO deliveries (delivery_id, request_sha256, account_id, requested_by, "
            "subject, text_body, html_body, headers, metadata, total, accepted_at) "
            "VALUES ($1, '\\x00', $2, 'bench', $3, $4, $5, $6, $7, $8, now())",
            delivery_id, account_id, SUBJECT, TEXT, HTML, HEADERS, {"bench": "steps"}, count)
        await db.copy_records_to_table(
            "delivery_recipients", columns=["delivery_id", "idx", "email", "name", "vars",
                                            "state", "queued_at"],
            records=[(delivery_id, i, r["email"], r["name"], r["vars"], "queued",
                      datetime.now(UTC)) for i, r in enumerate(map(recipient, range(count)))])
    content, metadata = await store.content(pool, delivery_id, {
        "from_address": FROM_ADDRESS, "from_name": FROM_NAME, "reply_to": None})
    composer = Composer(content)
    session = SmtpSession(SmtpEndpoint(host=bench.sink.host, port=bench.sink.port, tls="none"),
                          ssl_context=client_ssl_context(), timeout_s=30)
    owner = "bench-steps"
    bodies = [SendJob(job_id=f"{delivery_id}:{i}", delivery_id=delivery_id,
                      account_id=account_id, index=i, **recipient(i)).model_dump_json().encode()
              for i in range(count)]
    timer = StepTimer()
    try:
        await session.open()
        await store.take_lease(pool, account_id, owner, 0, 120)  # then kept by each record
        for body in bodies:
            timer.begin()
            job = SendJob.model_validate_json(body)
            timer.mark("decode the job (pydantic)")
            await store.recipient(pool, job.delivery_id, job.index)
            timer.mark("read the ledger row (pool)")
            mail = composer.compose(email=job.email, name=job.name, vars=job.vars)
            timer.mark("compose the mail")
            code, _ = await session.send(envelope_address(FROM_ADDRESS),
                                         envelope_address(job.email), mail.data)
            timer.mark("SMTP transaction (MAIL, RCPT, DATA)")
            await store.record(
                pool, delivery_id=job.delivery_id, index=job.index, state="sent", code=code,
                message="ok", message_id=mail.message_id, account_id=account_id, owner=owner,
                touched_server=True, hold=timedelta(seconds=5), completed_id=delivery_id,
                event=MailSent(
                    delivery_id=job.delivery_id, metadata=metadata, account_id=account_id,
                    recipient=job.email, message_id=mail.message_id, smtp_code=code,
                    attempts=0).model_dump(mode="json"))
            timer.mark("record outcome + events (function, commit)")
    finally:
        await session.close()
    timer.times["broker: ack -> next delivery (quorum, prefetch 1)"] = \
        [await consume_cycle(bench, count)]

    # Two costs inside the database steps, each against its own control.
    extra = StepTimer()
    async with pool.acquire() as held:
        for _ in range(count):
            extra.begin()
            await pool.fetchval("SELECT 1")
            extra.mark("pool")
            await held.fetchval("SELECT 1")
            extra.mark("held")
            await held.execute("UPDATE account_runtime SET interval_ms = NULL "
                               "WHERE account_id = $1", account_id)
            extra.mark("commit")
            async with held.transaction():
                await held.execute("SET LOCAL synchronous_commit = off")
                await held.execute("UPDATE account_runtime SET interval_ms = NULL "
                                   "WHERE account_id = $1", account_id)
            extra.mark("async commit")

    def mean_ms(values: list[float]) -> float:
        return sum(values) / len(values) * 1e3

    print(f"\n## 1b. one mail's steps in the sender's order, each timed alone here "
          f"({count} mails, ms)")
    print(f"{'step':<54}{'p50':>7}{'mean':>8}")
    total = 0.0
    for step, values in timer.times.items():
        total += mean_ms(values)
        print(f"{step:<54}{percentile(values, 50) * 1e3:>7.2f}{mean_ms(values):>8.2f}")
    print(f"{'sum of the means':<54}{'':>7}{total:>8.2f}")
    print(f"{'observed in 1. (wall time per mail of the sender)':<54}{'':>7}"
          f"{1e3 / observed_rate:>8.2f}")
    print(f"inside the database steps: a pool query costs {mean_ms(extra.times['pool']):.2f} ms "
          f"against {mean_ms(extra.times['held']):.2f} ms on a held connection (the pool runs "
          f"its reset query on every release); an autocommit UPDATE costs "
          f"{mean_ms(extra.times['commit']):.2f} ms against "
          f"{mean_ms(extra.times['async commit']):.2f} ms with synchronous_commit off (the WAL "
          "flush)")


# -- 3. latency -----------------------------------------------------------------------------


async def bare_hop(bench: Bench, count: int) -> list[float]:
    """A persistent publish with confirm to a quorum queue, until a consumer has it."""
    assert bench.connection is not None and bench.channel is not None
    name = f"bench-sender-hop-{uuid.uuid4().hex[:8]}"
    bench.queues.append(name)
    consuming = await bench.connection.channel()
    await consuming.set_qos(prefetch_count=1)
    queue = await consuming.declare_queue(name, durable=True,
                                          arguments={"x-queue-type": "quorum"})
    waiting: list[asyncio.Future[float]] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        if waiting and not waiting[0].done():
            waiting[0].set_result(time.perf_counter())

    await queue.consume(on_message)
    exchange = bench.channel.default_exchange
    latencies = []
    try:
        for i in range(count + 10):
            waiting[:] = [asyncio.get_running_loop().create_future()]
            started = time.perf_counter()
            await publish(exchange, name, make_message(b"{}", message_id=f"hop-{i}"))
            arrived = await asyncio.wait_for(waiting[0], 30)
            if i >= 10:  # the first ten warm up
                latencies.append(arrived - started)
    finally:
        await consuming.close()
    return latencies


async def latency(bench: Bench, account_id: str, sender: ServiceProcess) -> None:
    assert bench.events is not None and bench.pool is not None
    count = bench.sizes.requests
    print(f"3. latency: {count} one-recipient requests ...", file=sys.stderr)
    hops = await bare_hop(bench, count)
    smtp = (await bare_loop(bench.sink, composed_mails(count), 20)).latencies_s
    await bench.events.bind("mail.sent")
    totals, ledger, confirms, accepts, sends = [], [], [], [], []
    try:
        for i in range(count + 5):
            body = request_body(account_id, 1, "latency")
            delivery_id = body["delivery_id"]
            accepted = bench.events.expect("delivery.accepted", delivery_id)
            sent = bench.events.expect("mail.sent", delivery_id)
            completed = bench.events.expect("delivery.completed", delivery_id)
            wall, started = time.time(), time.perf_counter()
            await bench.publish_request(body)
            confirmed = time.perf_counter()
            accepted_at = (await bench.wait(accepted, "delivery.accepted", 60)).perf
            sent_at = (await bench.wait(sent, "mail.sent", 60)).perf
            await bench.wait(completed, "delivery.completed", 60)
            recorded = await bench.pool.fetchval(
                "SELECT extract(epoch FROM updated_at)::float8 FROM delivery_recipients "
                "WHERE delivery_id = $1 AND state = 'sent'", delivery_id)
            if recorded is None:
                raise BenchError(f"mail.sent arrived but the ledger row of {delivery_id} is "
                                 "not `sent`")
            if i < 5:  # the first five warm up
                continue
            totals.append(sent_at - started)
            store.append(recorded - wall)
            confirms.append(confirmed - started)
            accepts.append(accepted_at - confirmed)
            sends.append(sent_at - accepted_at)
    finally:
        await bench.events.unbind("mail.sent")
    bench.check_trouble()

    def ms(values: list[float], p: float) -> str:
        return f"{percentile(values, p) * 1e3:>7.1f}"

    print(f"\n## 3. latency: {count} one-recipient requests in turn, one account, interval 0")
    print(f"{'':<54}{'p50 ms':>7}{'p99 ms':>8}{'max ms':>8}")
    rows = [
        ("baseline: bare SMTP transaction, open connection", smtp),
        ("baseline: bare broker hop (publish+confirm -> consumer)", hops),
        ("publish -> ledger row `sent` (the 250, DB clock)", ledger),
        ("publish -> mail.sent event arrives", totals),
        ("  of which publish -> confirm", confirms),
        ("  of which confirm -> delivery.accepted arrives", accepts),
        ("  of which delivery.accepted -> mail.sent arrives", sends),
    ]
    for label, values in rows:
        print(f"{label:<54}{ms(values, 50)} {ms(values, 99)} {ms(values, 100)}")
    floor = [2 * a + b for a, b in zip(sorted(hops), sorted(smtp), strict=False)]
    print(f"reference: two broker hops + one SMTP transaction, p50 {ms(floor, 50).strip()} ms "
          "(request -> dispatcher, job -> sender; the databases' work not included)")


# -- 2. pacing ------------------------------------------------------------------------------


async def lease_holders(bench: Bench, ids: list[str]) -> dict[str, int]:
    """Accounts by the replica that sends for them: the holder of the account's lease (held
    through the pause). A lease's owner is "<replica id>/<worker token>"."""
    assert bench.pool is not None
    return {row["replica"]: row["accounts"] for row in await bench.pool.fetch(
        "SELECT split_part(lease_owner, '/', 1) AS replica, count(*) AS accounts "
        "FROM account_runtime WHERE account_id = ANY($1::uuid[]) "
        "AND lease_until > clock_timestamp() GROUP BY 1", ids)}


async def pacing(bench: Bench, sends_csv: str | None = None, replicas: int = 1,
                 db_pool: int | None = None) -> None:
    assert bench.events is not None and bench.pool is not None and bench.dispatcher
    sizes = bench.sizes
    per_account = math.ceil(sizes.warm_up_s + sizes.pacing_s) + PACING_MARGIN_S
    print(f"2. pacing: {sizes.accounts} accounts x {per_account} mails, {sizes.pacing_s:.0f} s "
          "measured ...", file=sys.stderr)
    ids = await bench.create_accounts(sizes.accounts, sizes.interval_ms)
    # The senders first, on empty queues: subscribing to queues that already hold jobs is much
    # slower (each account starts sending as it is subscribed, one after the other).
    senders = [await bench.start_sender(timeout=300, db_pool=db_pool) for _ in range(replicas)]
    subscribe_s = [sender.ready_after_s for sender in senders]
    ready_rss = [proc_status(sender.pid)["VmRSS"] for sender in senders]

    bodies = [request_body(account_id, per_account, "pacing") for account_id in ids]
    delivery_ids = [body["delivery_id"] for body in bodies]
    accepted = [bench.events.expect("delivery.accepted", d) for d in delivery_ids]
    started = time.perf_counter()
    await bench.publish_requests(bodies)
    for future in accepted:
        await bench.wait(future, "delivery.accepted of every pacing request")
    fan_out_s = time.perf_counter() - started
    await asyncio.sleep(sizes.warm_up_s)
    bench.check_alive()
    holders_before = await lease_holders(bench, ids)
    text_before = "\n".join([await sender.metrics_text() for sender in senders])
    cpu = CpuMeter.of(sender=[sender.pid for sender in senders],
                      dispatcher=bench.dispatcher.pid).start()
    window_start = await bench.pool.fetchval("SELECT clock_timestamp()")
    deadline = time.monotonic() + sizes.pacing_s
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
        bench.check_alive()
    window_end = await bench.pool.fetchval("SELECT clock_timestamp()")
    cpu.stop()
    text_after = "\n".join([await sender.metrics_text() for sender in senders])
    peak_rss = [proc_status(sender.pid)["VmHWM"] for sender in senders]
    holders = await lease_holders(bench, ids)
    consumers = [metric_values(await sender.metrics_text(), ("mail_sender_consumers",))[
        "mail_sender_consumers"] for sender in senders]
    bench.check_trouble()

    window_s = (window_end - window_start).total_seconds()
    rows = await bench.pool.fetch(
        "WITH sends AS ("
        "  SELECT d.account_id, r.updated_at, lag(r.updated_at) OVER "
        "    (PARTITION BY d.account_id ORDER BY r.updated_at) AS previous "
        "  FROM delivery_recipients r JOIN deliveries d USING (delivery_id) "
        "  WHERE r.delivery_id = ANY($1) AND r.state = 'sent') "
        "SELECT account_id, count(*) AS sends, "
        "  array_agg(extract(epoch FROM updated_at - previous)::float8 * 1000) "
        "    FILTER (WHERE previous IS NOT NULL) AS gaps "
        "FROM sends WHERE updated_at >= $2 AND updated_at < $3 GROUP BY account_id",
        delivery_ids, window_start, window_end)
    ran_dry = await bench.pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE delivery_id = ANY($1) "
        "AND sent + failed + unknown >= total AND completed_at < $2", delivery_ids, window_end)
    seconds = await bench.pool.fetch(
        "SELECT floor(extract(epoch FROM updated_at - $2))::int AS second, count(*) AS sends "
        "FROM delivery_recipients WHERE delivery_id = ANY($1) AND state = 'sent' "
        "AND updated_at >= $2 AND updated_at < $3 GROUP BY 1", delivery_ids, window_start,
        window_end)
    per_second = dict.fromkeys(range(int(window_s)), 0)  # whole seconds only
    per_second.update({row["second"]: row["sends"] for row in seconds
                       if row["second"] in per_second})
    if sends_csv:  # for a closer look: account, DB time of each `sent` record in the window
        records = await bench.pool.fetch(
            "SELECT d.account_id, extract(epoch FROM r.updated_at)::float8 AS at "
            "FROM delivery_recipients r JOIN deliveries d USING (delivery_id) "
            "WHERE r.delivery_id = ANY($1) AND r.state = 'sent' AND r.updated_at >= $2 "
            "AND r.updated_at < $3 ORDER BY 2", delivery_ids, window_start, window_end)
        text = "account_id,sent_at\n" + "".join(
            f"{row['account_id']},{row['at']:.6f}\n" for row in records)
        await asyncio.to_thread(Path(sends_csv).write_text, text)
    sends = sum(row["sends"] for row in rows)
    per_account_sends = sorted([row["sends"] for row in rows] + [0] * (len(ids) - len(rows)))
    gaps = [gap for row in rows for gap in (row["gaps"] or [])]
    excess = [gap - sizes.interval_ms for gap in gaps]
    ideal = len(ids) * 1000 / sizes.interval_ms
    names = ("mail_sender_send_seconds_count", "mail_sender_send_seconds_sum",
             "mail_sender_record_seconds_count", "mail_sender_record_seconds_sum",
             "mail_sender_pause_short_total")
    metrics_before, metrics_after = (metric_values(text, names)
                                     for text in (text_before, text_after))
    smtp_count, smtp_s, record_count, record_s, short = (
        metrics_after[name] - metrics_before[name] for name in names)
    overrun = [histogram_quantile(histogram(text_before, "mail_sender_pause_overrun_seconds"),
                                  histogram(text_after, "mail_sender_pause_overrun_seconds"), q)
               for q in (0.5, 0.9, 0.99)]

    who = "one sender" if replicas == 1 else f"{replicas} sender replicas"
    print(f"\n## 2. pacing: {len(ids)} accounts at {sizes.interval_ms:,} ms, {who}, "
          f"{window_s:.1f} s measured after a {sizes.warm_up_s:.0f} s warm-up")
    print(f"sender(s) subscribed to {len(ids)} empty queues and ready in "
          f"{', '.join(f'{s:.1f}' for s in subscribe_s)} s; then {len(ids)} requests of "
          f"{per_account} recipients, all accepted {fan_out_s:.1f} s after their publish (each "
          "account sends from its acceptance)")
    print(f"baseline (ideal): {ideal:,.0f} mails/s; achieved {sends / window_s:,.1f} mails/s = "
          f"{sends / window_s / ideal:.1%} (goal: >= 99%)")
    counts = list(per_second.values())
    print(f"mails per second of the window: min {min(counts, default=0)}, p50 "
          f"{percentile(counts, 50):.0f}, max {max(counts, default=0)}")
    print(f"mails per account in the window: min {per_account_sends[0]}, p1 "
          f"{percentile(per_account_sends, 1):.0f}, median {percentile(per_account_sends, 50):.0f}"
          f", max {per_account_sends[-1]} (ideal {window_s * 1000 / sizes.interval_ms:.1f}); "
          f"accounts that ran out of mails before the end: {ran_dry}")
    print("spacing of consecutive `sent` records of one account (updated_at; includes the SMTP "
          "transaction, so it is >= the pause):")
    print(f"  {len(gaps):,} spacings: min {min(gaps, default=math.nan):,.1f} ms (never below "
          f"{sizes.interval_ms:,}: {sum(g < sizes.interval_ms for g in gaps)} below), "
          f"median {percentile(gaps, 50):,.1f}, max {max(gaps, default=math.nan):,.1f} ms")
    print(f"  spacing - interval: p50 {percentile(excess, 50):.1f} ms, p90 "
          f"{percentile(excess, 90):.1f} ms, p99 {percentile(excess, 99):.1f} ms (goal: <= 20 "
          f"ms), p99.9 {percentile(excess, 99.9):.1f} ms")
    print(f"  SMTP transaction inside the sender (its histogram): "
          f"{smtp_s / max(smtp_count, 1) * 1e3:.2f} ms mean over {smtp_count:,.0f} sends; "
          f"recording an outcome {record_s / max(record_count, 1) * 1e3:.2f} ms mean")
    print("the pause itself, as the server sees it (the sender's histogram: its 250 of one "
          "transaction to its MAIL of the next, less the interval):")
    print(f"  {overrun[0][1]:,.0f} pauses: p50 <= {overrun[0][0] * 1e3:g} ms, p90 <= "
          f"{overrun[1][0] * 1e3:g} ms, p99 <= {overrun[2][0] * 1e3:g} ms (goal: <= 20 ms; "
          f"bucket bounds); shorter than the interval: {short:.0f}")
    print(f"sender CPU {cpu.used['sender'] / max(sends, 1) * 1e3:.2f} ms/mail; CPU in cores: "
          f"{cpu.summary()}")
    replica_ids = [sender.env["MAIL_REPLICA_ID"] for sender in senders]
    for number, (replica_id, ready, peak, queues) in enumerate(
            zip(replica_ids, ready_rss, peak_rss, consumers, strict=True), 1):
        print(f"sender {number}: RSS {ready / 1024:.0f} MB when ready, peak (VmHWM) "
              f"{peak / 1024:.0f} MB; consumes {queues:.0f} queues; sending for "
              f"{holders_before.get(replica_id, 0)} accounts at the window's start, "
              f"{holders.get(replica_id, 0)} at its end (the leases held)")
    print(f"accounts without a live lease at the window's end: {len(ids) - sum(holders.values())}"
          f"; held by another process: "
          f"{sum(n for owner, n in holders.items() if owner not in replica_ids)}")
    for sender in senders:
        await sender.stop()


# -- the run --------------------------------------------------------------------------------


BENCHMARKS = ("throughput", "pacing", "latency")


async def run(args: argparse.Namespace) -> None:
    sizes = QUICK if args.quick else FULL
    if args.accounts or args.interval_ms:  # 2. pacing on other numbers (issue 16 §3)
        sizes = dataclasses.replace(sizes, accounts=args.accounts or sizes.accounts,
                                    interval_ms=args.interval_ms or sizes.interval_ms)
    only = set(args.only or BENCHMARKS)
    bench = Bench(sizes)
    try:
        busy = await busy_share()
        await bench.set_up()
        server = getattr(bench.connection.transport.connection,  # type: ignore[union-attr]
                         "server_properties", None) or {}
        print(f"# sender benchmarks ({'quick' if args.quick else 'full'}), "
              f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, RabbitMQ "
              f"{server.get('version', '?')}, smtp-sink on 127.0.0.1:{bench.sink.port}; "
              f"machine busy before the run (other work): {busy:.0%}")
        if only & {"throughput", "latency"}:
            [account_id] = await bench.create_accounts(1, 0)
            sender = await bench.start_sender(timeout=60)
            if "throughput" in only:
                await wait_quiet(args.wait_quiet, "1. throughput")
                rate = await throughput(bench, account_id, sender)
                await steps(bench, rate)
            if "latency" in only:
                await wait_quiet(args.wait_quiet, "3. latency")
                await latency(bench, account_id, sender)
            await sender.stop()
            await bench.retire_accounts([account_id])
        if "pacing" in only:
            await wait_quiet(args.wait_quiet, "2. pacing")
            await pacing(bench, args.sends_csv, args.replicas, args.sender_db_pool)
    finally:
        await bench.clean_up()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller runs: 1,000 mails; 100 accounts for 15 s; 50 requests")
    parser.add_argument("--only", action="append", choices=BENCHMARKS,
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each benchmark, wait up to this long for the machine to "
                        "be less than 15%% busy with other work (default: do not wait)")
    parser.add_argument("--accounts", type=int, metavar="N",
                        help="2. pacing: this many accounts (default 500, quick 100)")
    parser.add_argument("--interval-ms", type=int, metavar="MS",
                        help="2. pacing: each account's interval (default 1,000)")
    parser.add_argument("--replicas", type=int, default=1, metavar="N",
                        help="2. pacing: this many sender processes (default 1)")
    parser.add_argument("--sender-db-pool", type=int, metavar="N",
                        help="2. pacing: each sender's MAIL_DB_POOL_MAX (its default, 40, "
                        "times three replicas is over PostgreSQL's 100 connections)")
    parser.add_argument("--sends-csv", metavar="PATH",
                        help="2. pacing: also write every `sent` record of the window "
                        "(account, time) to this CSV file")
    args = parser.parse_args()
    run_benchmark("bench_sender", lambda: run(args), (SmtpSinkError,))


if __name__ == "__main__":
    main()
