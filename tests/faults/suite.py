"""The fault suite: real processes on a private stack, one delivery per account over several
accounts (intervals 0 and 200 ms; 100 in the short form), one fault per row, and one table at
the end.

    python -m tests.faults.suite [--long] [--only TEXT]     (`make faults`; `make test` runs the
                                                        short form through
                                                        tests/integration/test_fault_suite.py)

Each row starts the dispatcher and the sender as a deployment would (each on its own, the
sender restarted after a SIGKILL as a supervisor would), publishes the deliveries, injects its
fault while they are sent, and waits until every recipient is settled. What it counts is seen
by the SMTP servers (aiosmtpd, in this process) and the ledger:

- lost: a recipient never settled, or settled `sent` without the server ever receiving it;
- doubled: a recipient the server received more than once (allowed: one per account in
  flight for each SIGKILL of a sender, the accepted window 250 -> ledger commit);
- unknown: settled `unknown` (the server took the data and never answered);
- short pauses: two transactions of one account closer than its interval at the server
  (its 250 to the next MAIL), overlapping ones included;
- events: each settled recipient's `mail.sent` / `mail.failed` and each delivery's one
  `delivery.completed` (one event id) seen on `mail.events`.
"""

import argparse
import asyncio
import collections
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import orjson
from yarl import URL

from services.config_svc.main import MIGRATIONS as ACCOUNTS_MIGRATIONS
from services.config_svc.repository import to_public
from services.dispatcher.main import MIGRATIONS as DISPATCHER_MIGRATIONS
from services.sender.main import MIGRATIONS as SENDER_MIGRATIONS
from shared.broker import connect_robust
from shared.crypto import SecretBox
from shared.db import migrate
from shared.messages import AccountUpdated
from shared.topology import EventPublisher, Topology, make_message, open_confirmed_channel, publish
from tests.support.processes import ServiceProcess
from tests.support.smtp_servers import SmtpTestServer
from tests.support.waiting import until

ROOT = Path(__file__).parents[2]
KEY = SecretBox.generate_key()
USER, PASSWORD = "news@shop.example.com", "fault-suite-password"
INTERVALS_MS = (0, 0, 200, 200)  # the long form's accounts
# The short form's: half the pause, so a row inside `make test` lasts half as long; what a
# pause shorter than the interval would show is the same.
SHORT_INTERVALS_MS = (0, 0, 100, 100)
FINAL = ("sent", "failed", "unknown")


@dataclass
class Outcome:
    name: str
    recipients: int
    lost: int
    doubled: int
    allowed_doubles: int
    unknown: int
    failed: int
    short_pauses: int
    missing_events: int
    seconds: float
    notes: str = ""

    @property
    def goal_met(self) -> bool:
        return (self.lost == 0 and self.doubled <= self.allowed_doubles
                and self.short_pauses == 0 and self.missing_events == 0)


@dataclass
class Run:
    """One row: its accounts, servers and processes."""
    suite: "Suite"
    counts: tuple[int, ...]  # recipients of each account's delivery
    servers: dict[str, SmtpTestServer] = field(default_factory=dict)  # account -> server
    intervals: dict[str, int] = field(default_factory=dict)
    deliveries: dict[str, str] = field(default_factory=dict)  # delivery -> account
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    kills: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def received(self) -> int:
        return sum(len(server.messages) for server in self.servers.values())

    async def until_received(self, share: float, timeout: float = 60) -> None:
        """Until that share of all mails has reached the servers."""
        async def enough() -> bool:
            return self.received() >= share * self.total

        if not await until(enough, timeout):
            raise TimeoutError(f"{self.received()} of {self.total} received")

    # -- processes ------------------------------------------------------------------------

    def _process(self, name: str, module: str, env: dict[str, str]) -> ServiceProcess:
        suite = self.suite
        process = ServiceProcess(module, {
            "MAIL_AMQP_URL": suite.amqp_url, "MAIL_POSTGRES_DSN": suite.postgres_dsn,
            "MAIL_LOG_LEVEL": "warning", "MAIL_JWT_SECRET": "fault-suite-secret-of-32-bytes!!",
            **env}, suite.log_dir / f"{name}.log", name=name)
        self.processes[name] = process
        return process

    async def start_dispatcher(self) -> None:
        await self._process("dispatcher", "services.dispatcher",
                            {"MAIL_FANOUT_WINDOW": "50"}).start()

    async def start_sender(self) -> None:
        await self._process("sender", "services.sender", {
            "MAIL_FERNET_KEYS": KEY, "MAIL_REPLICA_ID": "fault-suite-sender",
            "MAIL_RETRY_DELAYS_S": "1,2", "MAIL_LEASE_TTL_S": "5", "MAIL_RECONCILE_S": "2",
            "MAIL_SHUTDOWN_GRACE_S": "10", "MAIL_SMTP_TIMEOUT_S": "5",
            "MAIL_PROBE_MIN_S": "0.5", "MAIL_PROBE_MAX_S": "2"}).start(timeout=60)

    async def kill(self, name: str, restart_after_s: float = 0.5) -> None:
        """SIGKILL, then started again, as a supervisor restarts a container."""
        await self.processes[name].kill()
        self.kills += name == "sender"
        await asyncio.sleep(restart_after_s)
        await (self.start_sender() if name == "sender" else self.start_dispatcher())

    async def stop_all(self) -> None:
        for process in self.processes.values():
            await process.stop(timeout=15)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(30)}" for p in self.processes.values())


def read_env(directory: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in
                (directory / "env").read_text().splitlines() if "=" in line)


class Suite:
    def __init__(self, stack_dir: Path, log_dir: Path, cluster_dir: Path | None = None,
                 intervals_ms: tuple[int, ...] = INTERVALS_MS) -> None:
        """`cluster_dir`: a RabbitMQ cluster (`stack.py cluster-up`) used instead of the
        stack's own node, for the cluster's rows."""
        self.intervals_ms = intervals_ms
        self.stack_dir = stack_dir
        self.log_dir = log_dir
        self.cluster_dir = cluster_dir
        env = read_env(stack_dir)
        self.amqp_url = read_env(cluster_dir)["MAIL_AMQP_URL"] if cluster_dir else env[
            "MAIL_AMQP_URL"]
        self.postgres_dsn = env["MAIL_POSTGRES_DSN"]
        self.topology = Topology()
        self.events: list[dict] = []
        self.pool: asyncpg.Pool
        self.connection: aio_pika.abc.AbstractRobustConnection
        self.channel: aio_pika.abc.AbstractChannel

    async def open(self) -> None:
        # Named, so that the terminations spare the suite's own connections.
        self.pool = await asyncpg.create_pool(self.postgres_dsn, min_size=1, max_size=4,
                                              init=_json_codecs,
                                              server_settings={"application_name": "suite"})
        async with self.pool.acquire() as db:
            for service, folder in (("config_svc", ACCOUNTS_MIGRATIONS),
                                    ("dispatcher", DISPATCHER_MIGRATIONS),
                                    ("sender", SENDER_MIGRATIONS)):
                await migrate(db, service, folder)
        self.connection = await connect_robust(self.amqp_url)
        self.channel = await open_confirmed_channel(self.connection)
        await self.topology.declare(self.channel)
        # Durable, so that no event is missed while the broker restarts.
        events = await self.channel.declare_queue(
            "fault-suite.events", durable=True, arguments={"x-queue-type": "quorum"})
        await events.bind(self.topology.events_exchange, routing_key="#")
        await events.consume(self._on_event)

    async def _on_event(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.events.append(orjson.loads(message.body))
        await message.ack()

    async def close(self) -> None:
        await self.connection.close()
        await self.pool.close()

    # -- one row --------------------------------------------------------------------------

    async def run(self, name: str, counts: tuple[int, ...],
                  fault: Callable[[Run], Awaitable[None]],
                  prepare: Callable[[Run], Awaitable[None]] | None = None) -> Outcome:
        await self._with_retries(lambda: self.pool.execute(
            "UPDATE accounts SET deleted_at = now() WHERE deleted_at IS NULL; "
            "DELETE FROM sender_replicas"))
        run = Run(self, counts)
        for interval in self.intervals_ms:
            server = SmtpTestServer(users={USER: PASSWORD})
            await server.start()
            account_id = await self.add_account(server, interval)
            run.servers[account_id] = server
            run.intervals[account_id] = interval
        if prepare is not None:
            await prepare(run)
        # Both at once, as a deployment's pods start; each waits for its own readiness.
        await asyncio.gather(run.start_dispatcher(), run.start_sender())
        started = time.monotonic()
        for account_id, count in zip(run.servers, counts, strict=True):
            run.deliveries[await self.publish_delivery(account_id, count)] = account_id
        try:
            await fault(run)
            await self._until_settled(run, timeout=60 + run.total * 0.25)
            seconds = time.monotonic() - started
            await self._until_events(run, timeout=20)
        except BaseException:
            print(run.logs(), file=sys.stderr)
            raise
        finally:
            await run.stop_all()
            for server in run.servers.values():
                await server.stop()
        return await self._outcome(name, run, seconds)

    async def add_account(self, server: SmtpTestServer, interval_ms: int) -> str:
        account_id = str(await self.pool.fetchval(
            "INSERT INTO accounts (name, from_address, smtp_host, smtp_port, tls, smtp_auth, "
            "smtp_username, smtp_password_enc, send_interval_ms, created_by) "
            "VALUES ($1, $2, $3, $4, 'none', true, $5, $6, $7, 'fault-suite') RETURNING id",
            f"fault suite {time.monotonic_ns()}", USER, server.host, server.port, USER,
            SecretBox([KEY]).encrypt(PASSWORD), interval_ms))
        await self.topology.declare_account_queue(self.channel, account_id)
        return account_id

    async def publish_delivery(self, account_id: str, count: int) -> str:
        delivery_id = f"faults-{account_id[:8]}-{time.monotonic_ns()}"
        body = {"delivery_id": delivery_id, "account_id": account_id,
                "subject": "fault suite {{name}}", "text": "hello {{name}}",
                "recipients": [{"email": f"r{i}.{account_id[:8]}@example.com", "name": f"n{i}"}
                               for i in range(count)]}
        exchange = await self.channel.get_exchange(self.topology.requests_exchange)
        await publish(exchange, "delivery.request",
                      make_message(orjson.dumps(body), message_id=delivery_id))
        return delivery_id

    async def _until_settled(self, run: Run, timeout: float) -> None:
        """Until every recipient is settled, or `timeout` (the outcome counts the rest)."""
        async def settled() -> bool:
            return await self._with_retries(lambda: self.pool.fetchval(
                "SELECT count(*) FROM delivery_recipients WHERE delivery_id = ANY($1) "
                "AND state = ANY($2)", list(run.deliveries), list(FINAL))) == run.total

        await until(settled, timeout, interval=0.2)

    async def _until_events(self, run: Run, timeout: float) -> None:
        """Until every event the settled recipients call for is seen: `delivery.completed`
        (the dispatcher's outbox) may come before the last `mail.sent` (the sender's)."""
        states = await self._states(run)  # settled: they no longer change

        async def all_seen() -> bool:
            return not self._missing_events(run, states)

        await until(all_seen, timeout, interval=0.2)  # the outcome counts what is missing

    async def _states(self, run: Run) -> dict[str, str]:
        rows = await self._with_retries(lambda: self.pool.fetch(
            "SELECT r.email, r.state FROM delivery_recipients r WHERE r.delivery_id = ANY($1)",
            list(run.deliveries)))
        return {row["email"]: row["state"] for row in rows}

    def _missing_events(self, run: Run, states: dict[str, str]) -> list[str]:
        """What is missing: a recipient's `mail.sent`/`mail.failed`, a delivery's one
        `delivery.completed`."""
        mine = [e for e in self.events if e.get("delivery_id") in run.deliveries]
        seen = {(e["recipient"], e["type"]) for e in mine if "recipient" in e}
        missing = [f"{kind} {email}" for email, state in states.items() if state in FINAL
                   and (email, kind := "mail.sent" if state == "sent" else "mail.failed")
                   not in seen]
        completed = collections.defaultdict(set)
        for event in mine:
            if event["type"] == "delivery.completed":
                completed[event["delivery_id"]].add(event["event_id"])
        return missing + [f"delivery.completed x{len(completed[d])} {d}"
                          for d in run.deliveries if len(completed[d]) != 1]

    async def _outcome(self, name: str, run: Run, seconds: float) -> Outcome:
        states = await self._states(run)
        received = collections.Counter(
            rcpt for server in run.servers.values() for m in server.messages
            for rcpt in m.rcpt_tos)
        lost = sum(1 for email, state in states.items()
                   if state not in FINAL or (state == "sent" and not received[email]))
        lost += run.total - len(states)
        doubled = sum(count - 1 for count in received.values() if count > 1)
        short = 0
        for account_id, server in run.servers.items():
            interval_s = run.intervals[account_id] / 1000
            messages = sorted(server.messages, key=lambda m: m.started_at)
            short += sum(1 for a, b in itertools.pairwise(messages)
                         if b.started_at - a.ended_at < interval_s)
        missing = self._missing_events(run, states)
        if missing:
            print(f"{name}: {len(missing)} events missing, e.g. {missing[:5]}",
                  file=sys.stderr, flush=True)
        in_flight = len(INTERVALS_MS)  # one transaction per account at most
        return Outcome(
            name=name, recipients=run.total, lost=lost, doubled=doubled,
            allowed_doubles=run.kills * in_flight,
            unknown=sum(1 for s in states.values() if s == "unknown"),
            failed=sum(1 for s in states.values() if s == "failed"), short_pauses=short,
            missing_events=len(missing), seconds=seconds, notes="; ".join(run.notes))

    async def _with_retries(self, work: Callable[[], Awaitable[Any]]) -> Any:
        """The suite's own reads survive the faults it injects."""
        for attempt in range(100):
            try:
                return await work()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if attempt == 99:
                    raise
                await asyncio.sleep(0.2)
        return None

    # -- the stack ------------------------------------------------------------------------

    def stack(self, command: str) -> None:
        subprocess.run([sys.executable, str(ROOT / "deploy/local/stack.py"), command,
                        "--dir", str(self.stack_dir)], check=True, capture_output=True)

    def cluster(self, command: str, node: int) -> None:
        assert self.cluster_dir is not None
        subprocess.run([sys.executable, str(ROOT / "deploy/local/stack.py"), command,
                        "--dir", str(self.cluster_dir), "--node", str(node)],
                       check=True, capture_output=True)

    async def leader(self, queue: str) -> int:
        """Which node (from 1) leads `queue`, asked of the first console that answers."""
        assert self.cluster_dir is not None
        env = read_env(self.cluster_dir)
        nodes = env["MAIL_RABBITMQ_NODES"].split(",")
        url = URL(self.amqp_url.split(",")[0])
        async with httpx.AsyncClient(auth=(url.user or "", url.password or ""),
                                     timeout=5) as client:
            for console in env["MAIL_RABBITMQ_MANAGEMENT_URLS"].split(","):
                try:
                    reply = await client.get(f"{console}api/queues/mail/{queue}")
                    return nodes.index(reply.raise_for_status().json()["leader"]) + 1
                except (httpx.HTTPError, KeyError, ValueError):
                    continue
        raise RuntimeError(f"no node says who leads {queue}")


async def _json_codecs(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec("jsonb", encoder=lambda v: orjson.dumps(v).decode(),
                                    decoder=orjson.loads, schema="pg_catalog")


# -- the faults -------------------------------------------------------------------------------


def undisturbed() -> Callable[[Run], Awaitable[None]]:
    async def fault(run: Run) -> None:
        pass
    return fault


def sender_kills(times: int) -> Callable[[Run], Awaitable[None]]:
    async def fault(run: Run) -> None:
        for k in range(times):
            await run.until_received((k + 1) / (times + 1))
            await run.kill("sender")
    return fault


def dispatcher_kill() -> Callable[[Run], Awaitable[None]]:
    async def fault(run: Run) -> None:
        await asyncio.sleep(0.05)  # the four requests are being fanned out
        await run.kill("dispatcher")
    return fault


def rabbitmq_restarts(times: int) -> Callable[[Run], Awaitable[None]]:
    async def fault(run: Run) -> None:
        for k in range(times):
            await run.until_received((k + 1) / (times + 1), timeout=120)
            await asyncio.to_thread(run.suite.stack, "restart-rabbitmq")
    return fault


def cluster_faults() -> Callable[[Run], Awaitable[None]]:
    """The node leading the first account's queue SIGKILLed at a third, started again 5 s
    later; at two thirds another node stopped and started (a rolling restart's step)."""
    async def fault(run: Run) -> None:
        suite = run.suite
        queue = suite.topology.account_queue(next(iter(run.servers)))
        await run.until_received(1 / 3, timeout=120)
        leader = await suite.leader(queue)
        await asyncio.to_thread(suite.cluster, "kill-node", leader)
        run.notes.append(f"node {leader} killed, leading")
        await asyncio.sleep(5)
        await asyncio.to_thread(suite.cluster, "start-node", leader)
        await run.until_received(2 / 3, timeout=120)
        other = 1 + leader % 3
        await asyncio.to_thread(suite.cluster, "stop-node", other)
        await asyncio.to_thread(suite.cluster, "start-node", other)
        run.notes.append(f"node {other} restarted")
    return fault


def postgres_terminations(every_s: float, for_s: float) -> Callable[[Run], Awaitable[None]]:
    async def fault(run: Run) -> None:
        await run.until_received(0.1)
        end = time.monotonic() + for_s
        killed = 0
        while time.monotonic() < end:
            connection = await asyncpg.connect(run.suite.postgres_dsn)
            try:
                killed += await connection.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend' AND application_name <> 'suite'")
            finally:
                await connection.close()
            await asyncio.sleep(every_s)
        run.notes.append(f"{killed} connections terminated")
    return fault


def postgres_restart() -> Callable[[Run], Awaitable[None]]:
    async def fault(run: Run) -> None:
        await run.until_received(0.3)
        await asyncio.to_thread(run.suite.stack, "restart-postgres")
    return fault


def dropped_after_data(every: int) -> tuple[Callable[[Run], Awaitable[None]],
                                             Callable[[Run], Awaitable[None]]]:
    async def prepare(run: Run) -> None:
        for server in run.servers.values():
            server.drop_after_data_every = every

    return undisturbed(), prepare


def undecryptable_password() -> tuple[Callable[[Run], Awaitable[None]],
                                      Callable[[Run], Awaitable[None]]]:
    """One account's password written with a key the sender does not have; once it is
    paused (`secret`), the operator sets the password again."""
    victim: list[str] = []

    async def prepare(run: Run) -> None:
        victim.append(next(iter(run.servers)))
        foreign = SecretBox([SecretBox.generate_key()]).encrypt(PASSWORD)
        await run.suite.pool.execute("UPDATE accounts SET smtp_password_enc = $2 WHERE id = $1",
                                     victim[0], foreign)

    async def fault(run: Run) -> None:
        suite = run.suite

        async def paused() -> bool:
            return any(e["type"] == "account.paused" and e["account_id"] == victim[0]
                       and e["reason"] == "secret" for e in suite.events)

        if not await until(paused, 30, interval=0.1):
            raise TimeoutError("the account was not paused for its password")
        run.notes.append("paused `secret`, then the password set again")
        await suite.pool.execute(
            "UPDATE accounts SET smtp_password_enc = $2, updated_at = now() WHERE id = $1",
            victim[0], SecretBox([KEY]).encrypt(PASSWORD))
        row = await suite.pool.fetchrow("SELECT * FROM accounts WHERE id = $1", victim[0])
        await EventPublisher(suite.channel, suite.topology).publish(
            AccountUpdated(account_id=victim[0], account=to_public(row)))

    return fault, prepare


def rows(long: bool) -> list[tuple[str, tuple[int, ...], Any]]:
    """(name, recipients of each account (intervals INTERVALS_MS), fault or (fault,
    prepare))."""
    if long:
        # 10,000: most on the accounts at interval 0, so that a row lasts about 100 s.
        counts = (4500, 4500, 500, 500)
        return [
            ("undisturbed", counts, undisturbed()),
            ("sender SIGKILL x10", counts, sender_kills(10)),
            ("RabbitMQ restart x2", counts, rabbitmq_restarts(2)),
        ]
    per = (50, 50, 50, 50)
    return [
        ("undisturbed", per, undisturbed()),
        ("sender SIGKILL x3", per, sender_kills(3)),
        ("dispatcher SIGKILL mid fan-out", per, dispatcher_kill()),
        ("RabbitMQ restart", per, rabbitmq_restarts(1)),
        ("PostgreSQL connections terminated every 0.5 s for 6 s", per,
         postgres_terminations(0.5, 6)),
        ("PostgreSQL restart", per, postgres_restart()),
        ("SMTP server drops the line after every 20th DATA", per, dropped_after_data(20)),
        ("undecryptable password on one account", per, undecryptable_password()),
    ]


def table(outcomes: list[Outcome]) -> str:
    """The rows in Markdown; "vs undisturbed" is against that row, when it ran."""
    base = next((o.seconds for o in outcomes if o.name == "undisturbed"), None)
    lines = ["| fault | recipients | lost | doubled (allowed) | unknown | failed | "
             "pauses < interval | missing events | time | vs undisturbed | goal |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for o in outcomes:
        lines.append(
            f"| {o.name}{' (' + o.notes + ')' if o.notes else ''} | {o.recipients} | {o.lost} "
            f"| {o.doubled} ({o.allowed_doubles}) | {o.unknown} | {o.failed} "
            f"| {o.short_pauses} | {o.missing_events} | {o.seconds:.1f} s "
            f"| {f'{o.seconds / base:.2f}x' if base else '-'} "
            f"| {'met' if o.goal_met else 'MISSED'} |")
    return "\n".join(lines)


async def run_rows(suite: Suite, specs: list[tuple[str, tuple[int, ...], Any]]
                   ) -> list[Outcome]:
    await suite.open()
    outcomes = []
    try:
        for name, per, spec in specs:
            fault, prepare = spec if isinstance(spec, tuple) else (spec, None)
            outcome = await suite.run(name, per, fault, prepare)
            print(f"{name}: {outcome}", file=sys.stderr, flush=True)
            outcomes.append(outcome)
    finally:
        await suite.close()
    return outcomes


CLUSTER_ROW = "RabbitMQ cluster: the leading node SIGKILLed, then another restarted"


def _chosen(name: str, only: str) -> bool:
    """Whether `--only` (all rows with "") takes the row called `name`."""
    return only.lower() in name.lower()


async def run_suite(long: bool, stack_dir: Path, log_dir: Path,
                    cluster_dir: Path | None = None, only: str = "") -> list[Outcome]:
    outcomes = []
    intervals = INTERVALS_MS if long else SHORT_INTERVALS_MS
    chosen = [row for row in rows(long) if _chosen(row[0], only)]
    if chosen:
        outcomes += await run_rows(Suite(stack_dir, log_dir, intervals_ms=intervals), chosen)
    if cluster_dir is not None and _chosen(CLUSTER_ROW, only):
        outcomes += await run_rows(Suite(stack_dir, log_dir, cluster_dir, intervals), [
            (CLUSTER_ROW, (4500, 4500, 500, 500) if long else (50, 50, 50, 50),
             cluster_faults())])
    return outcomes


def stack_up(directory: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "deploy/local/stack.py"), "up", "--dir",
                    str(directory), "--ports", "free"], check=True, capture_output=True)


def stack_down(directory: Path) -> None:
    """Stopped and removed (its PostgreSQL data too, also where they were kept outside).
    Thrown away: its RabbitMQ is SIGKILLed first (its graceful stop takes seconds)."""
    stack = [sys.executable, str(ROOT / "deploy/local/stack.py")]
    if (directory / "env").exists():
        subprocess.run([*stack, "kill-node", "--node", "1", "--dir", str(directory)],
                       capture_output=True)
    subprocess.run([*stack, "purge", "--dir", str(directory)], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true",
                        help="10,000 recipients, 10 sender kills, 2 broker restarts, and a "
                        "three-node cluster's leader killed and another node restarted")
    parser.add_argument("--only", default="", metavar="TEXT",
                        help="only the rows whose name holds TEXT (any case)")
    parser.add_argument("--stack-dir", type=Path, default=ROOT / ".run" / "faults-stack",
                        help="the private stack's folder (made and removed here)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the rows' outcomes to PATH")
    args = parser.parse_args()
    stack_dir = args.stack_dir
    # The long form's cluster rows: a three-node cluster of their own (about 30 s to start;
    # too slow beside the short form in `make test`, which has test_cluster.py instead).
    cluster_dir = ROOT / ".run" / "faults-cluster" if (
        args.long and _chosen(CLUSTER_ROW, args.only)) else None
    for directory in (stack_dir, cluster_dir):
        if directory is not None:
            stack_down(directory)
    stack_up(stack_dir)
    if cluster_dir is not None:
        subprocess.run([sys.executable, str(ROOT / "deploy/local/stack.py"), "cluster-up",
                        "--dir", str(cluster_dir), "--ports", "free", "--nodes", "3"],
                       check=True, capture_output=True)
    log_dir = Path(tempfile.mkdtemp(prefix="fault-suite-"))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        outcomes = asyncio.run(run_suite(args.long, stack_dir, log_dir, cluster_dir,
                                         args.only))
    finally:
        stack_down(stack_dir)
        if cluster_dir is not None:
            stack_down(cluster_dir)
    print(table(outcomes))
    print(f"\nprocess logs: {log_dir}")
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(o) for o in outcomes]))
    return 0 if all(o.goal_met for o in outcomes) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
