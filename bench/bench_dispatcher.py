"""The dispatcher on one 100,000-recipient delivery request, against plain aio-pika publishing.

Needs a running stack: `make bench` starts one, or, by hand from the repo root,
`set -a; . .run/stack/env; set +a; .venv/bin/python bench/bench_dispatcher.py [--repeat N]`.

- dispatcher: the real process (`python -m services.dispatcher`), one request of 100,000
  recipients (distinct addresses, a name and one var each, placeholders in subject, text and
  ~2 KB of html), timed from the request's publisher confirm to the `delivery.accepted` event;
  its peak RSS for that request is VmHWM of /proc/<pid>/status, reset before the request.
- raw: 100,000 messages of the size of one of the dispatcher's jobs, persistent, through the
  same exchange to a quorum queue with the account queues' arguments, with publisher confirms
  gathered 1,000 at a time (`publish_many`): what the broker takes from one Python client.

Both run in the same run on the same broker, each into an empty queue, after a small warm-up;
with `--repeat N` they alternate and the medians are printed. Prints figures only; exits
non-zero only on errors. The queues, the account and the deliveries it creates are removed at
the end. Other work on the machine shows in every figure: the load average is printed too.
"""

import argparse
import asyncio
import functools
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from bench.procstats import cpu_seconds, proc_status
from bench.service_process import REQUIRED_ENV, BenchError, ServiceProcess, run_benchmark
from services.dispatcher.decode import decode_request
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.validate import prepare
from shared.db import create_pool
from shared.messages import SendJob
from shared.topology import (
    Topology,
    make_message,
    open_confirmed_channel,
    publish,
    publish_many,
)
from tests.integration.dispatcher_fixtures import insert_account, migrate_all, request_body

RECIPIENTS = 100_000
WARM_UP = 1_000
CONFIRM_WINDOW = 1_000
JWT_SECRET = "bench-dispatcher-secret-of-32-bytes!"

SUBJECT = "{{name}} 様 11月のお知らせ【{{plan}}プラン】"
TEXT = (
    "{{name}} 様\n\nいつもご利用いただきありがとうございます。\n"
    "ご契約中のプラン: {{plan}}\nお届け先: {{email}}\n\n"
    + "11月のキャンペーンのお知らせです。詳しくはウェブサイトをご覧ください。\n" * 3
    + "\n-- \nExample Shop https://shop.example.com/\n"
)
HTML = (
    "<html><body><p>{{name}} 様</p><p>いつもご利用いただきありがとうございます。</p>\n"
    "<p>ご契約中のプラン: <b>{{plan}}</b><br>お届け先: {{email}}</p>\n"
    + "<p>11月のキャンペーンのお知らせです。<a href=\"https://shop.example.com/\">"
    "詳しくはこちら</a></p>\n" * 12
    + "</body></html>\n"
)
PLANS = ("gold", "silver", "bronze", "platinum")


def recipient(i: int) -> dict[str, Any]:
    return {"email": f"user{i:06d}@example.com", "name": f"山田 太郎 {i}",
            "vars": {"plan": PLANS[i % len(PLANS)]}}


def delivery_body(account_id: str, count: int) -> dict[str, Any]:
    return request_body(delivery_id=f"bench-{uuid.uuid4().hex[:12]}", account_id=account_id,
                        subject=SUBJECT, text=TEXT, html=HTML,
                        recipients=[recipient(i) for i in range(count)])


def job_message(delivery_id: str, account_id: str, index: int,
                recipient: dict[str, Any]) -> aio_pika.Message:
    """A job exactly as services/dispatcher/fanout.py builds it."""
    job = SendJob(job_id=f"{delivery_id}:{index}", delivery_id=delivery_id,
                  account_id=account_id, index=index, email=recipient["email"],
                  name=recipient["name"], vars=recipient["vars"])
    return make_message(job, message_id=job.job_id, type_="mail.send",
                        headers={"delivery_id": delivery_id, "account_id": account_id})


# -- the dispatcher process -----------------------------------------------------------------


def dispatcher_process(fanout_window: int | None) -> tuple[ServiceProcess, int]:
    """The dispatcher, logging at info, and the fan-out window it uses."""
    settings = {"MAIL_JWT_SECRET": JWT_SECRET, "MAIL_LOG_LEVEL": "info"}
    if fanout_window is not None:
        settings["MAIL_FANOUT_WINDOW"] = str(fanout_window)
    process = ServiceProcess("dispatcher", settings)
    window = int(process.env.get("MAIL_FANOUT_WINDOW") or
                 DispatcherSettings.model_fields["fanout_window"].default)
    return process, window


# -- events ---------------------------------------------------------------------------------


@dataclass
class Arrival:
    perf: float
    wall: float
    event: dict[str, Any]


class EventWatch:
    """A private queue on `mail.events` for `delivery.accepted` and `delivery.rejected`."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Arrival]] = {}

    async def start(self, channel: AbstractChannel, topology: Topology) -> None:
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in ("delivery.accepted", "delivery.rejected"):
            await queue.bind(topology.events_exchange, routing_key=key)
        await queue.consume(self._on_message, no_ack=True)

    def expect(self, delivery_id: str) -> asyncio.Future[Arrival]:
        future = asyncio.get_running_loop().create_future()
        self._waiting[delivery_id] = future
        return future

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        arrival = Arrival(time.perf_counter(), time.time(), orjson.loads(message.body))
        future = self._waiting.pop(arrival.event.get("delivery_id", ""), None)
        if future is not None and not future.done():
            future.set_result(arrival)


# -- one measurement of each kind -----------------------------------------------------------


@dataclass
class RawRun:
    count: int
    seconds: float
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds


@dataclass
class DispatcherRun:
    count: int
    publish_s: float  # the request's publish until its confirm
    seconds: float  # the confirm until delivery.accepted arrived
    intake_s: float  # until the deliveries row: broker delivery, decode, validate
    store_s: float  # until the first window: COPY, commit, read back the rows
    fanout_s: float  # until the event: publish the jobs, mark them queued, the event
    cpu_s: float  # the dispatcher's CPU time over the whole request
    idle_rss_mb: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds


class Bench:
    def __init__(self, connection: AbstractConnection, channel: AbstractChannel,
                 pool: asyncpg.Pool, dispatcher: ServiceProcess, timeout: float) -> None:
        self.connection = connection
        self.channel = channel
        self.pool = pool
        self.dispatcher = dispatcher
        self.timeout = timeout
        self.topology = Topology()  # the process uses the contract's names
        self.events = EventWatch()
        self.account_id = ""
        self.raw_key = f"bench-raw-{uuid.uuid4().hex[:8]}"
        self.delivery_ids: list[str] = []
        self.queues: list[str] = []

    async def set_up(self) -> None:
        await migrate_all(self.pool)
        await self.topology.declare(self.channel)
        underlay = await self.channel.get_underlay_channel()
        requests = await underlay.queue_declare(self.topology.requests_queue, passive=True)
        if requests.consumer_count:
            raise BenchError(f"{self.topology.requests_queue} already has "
                             f"{requests.consumer_count} consumer(s): another dispatcher runs on "
                             "this stack and would take the benchmark's requests")
        await self.events.start(self.channel, self.topology)
        self.account_id = await insert_account(self.pool)
        await self.topology.declare_account_queue(self.channel, self.account_id)
        self.queues.append(self.topology.account_queue(self.account_id))
        raw = await self.channel.declare_queue(
            self.raw_key, durable=True, arguments=self.topology.account_queue_arguments())
        await raw.bind(self.topology.send_exchange, routing_key=self.raw_key)
        self.queues.append(self.raw_key)

    async def depth(self, name: str) -> tuple[int, int]:
        """Messages and consumers of a queue, asked of the broker now."""
        underlay = await self.channel.get_underlay_channel()
        answer = await underlay.queue_declare(name, durable=True,
                                              arguments=self.topology.account_queue_arguments())
        return answer.message_count or 0, answer.consumer_count or 0

    async def purge(self, name: str) -> None:
        underlay = await self.channel.get_underlay_channel()
        await underlay.queue_purge(name)

    def raw_job(self) -> tuple[aio_pika.Message, int]:
        """One job as the dispatcher would build it for the request's last recipient."""
        index = RECIPIENTS - 1
        message = job_message(f"bench-{uuid.uuid4().hex[:12]}", self.account_id, index,
                              recipient(index))
        return message, len(message.body)

    async def raw(self, count: int) -> RawRun:
        """`count` jobs' worth of bytes, plain aio-pika, confirms 1,000 at a time."""
        template, _size = self.raw_job()
        body, headers = template.body, dict(template.headers)
        exchange = await self.channel.get_exchange(self.topology.send_exchange, ensure=False)

        def messages() -> Iterator[tuple[str, aio_pika.Message]]:
            for i in range(count):
                yield self.raw_key, make_message(body, message_id=f"raw-{i}", headers=headers,
                                                 type_="mail.send")

        cpu, started = time.process_time(), time.perf_counter()
        confirmed = await publish_many(exchange, messages(), window=CONFIRM_WINDOW)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if confirmed != count:
            raise BenchError(f"raw: {confirmed} of {count} messages confirmed")
        await self.expect_depth(self.raw_key, count)
        await self.purge(self.raw_key)
        return RawRun(count, elapsed, cpu)

    async def expect_depth(self, queue: str, count: int) -> None:
        for _ in range(20):
            found, consumers = await self.depth(queue)
            if found == count:
                return
            await asyncio.sleep(0.25)
        raise BenchError(f"{queue} holds {found} messages, not {count} ({consumers} consumers: "
                         "is something else using this stack?)")

    async def dispatch(self, count: int) -> DispatcherRun:
        """One request of `count` recipients, from its confirm to delivery.accepted."""
        body = delivery_body(self.account_id, count)
        delivery_id = body["delivery_id"]
        data = orjson.dumps(body)
        requests = await self.channel.get_exchange(self.topology.requests_exchange,
                                                   ensure=False)
        arrived = self.events.expect(delivery_id)
        self.delivery_ids.append(delivery_id)
        pid = self.dispatcher.pid
        self.dispatcher.check_alive()
        self.dispatcher.reset_peak_rss()
        idle_rss = proc_status(pid)["VmRSS"]
        cpu = cpu_seconds(pid)

        started = time.perf_counter()
        await publish(requests, "delivery.request", make_message(data, message_id=delivery_id))
        confirmed_perf, confirmed_wall = time.perf_counter(), time.time()
        arrival = await self.wait(arrived)
        seconds = arrival.perf - confirmed_perf
        cpu = cpu_seconds(pid) - cpu
        peak_rss = proc_status(pid)["VmHWM"]

        if arrival.event.get("type") != "delivery.accepted":
            deleted = await self.pool.fetchval(
                "SELECT deleted_at IS NOT NULL FROM accounts WHERE id = $1::uuid",
                self.account_id)
            raise BenchError(
                f"the request was rejected: {arrival.event.get('reason')}: "
                f"{arrival.event.get('detail')}" + (
                    "\n(something else on this stack marked the benchmark's account deleted: "
                    "another test run?)" if deleted else ""))
        if arrival.event.get("recipients") != count:
            raise BenchError(f"accepted with {arrival.event.get('recipients')} recipients, "
                             f"not {count}")
        row = await self.pool.fetchrow(
            "SELECT extract(epoch FROM d.created_at)::float8 AS created, "
            "extract(epoch FROM min(r.queued_at))::float8 AS first_queued, "
            "count(*) FILTER (WHERE r.state = 'queued') AS queued "
            "FROM deliveries d JOIN delivery_recipients r USING (delivery_id) "
            "WHERE d.delivery_id = $1 GROUP BY d.delivery_id", delivery_id)
        if row is None or row["queued"] != count:
            raise BenchError(f"{0 if row is None else row['queued']} recipient rows queued, "
                             f"not {count}")
        await self.expect_depth(self.topology.account_queue(self.account_id), count)
        await self.purge(self.topology.account_queue(self.account_id))
        await self.pool.execute("DELETE FROM deliveries WHERE delivery_id = $1", delivery_id)
        return DispatcherRun(
            count=count, publish_s=confirmed_perf - started, seconds=seconds,
            intake_s=row["created"] - confirmed_wall,
            store_s=row["first_queued"] - row["created"],
            fanout_s=arrival.wall - row["first_queued"],
            cpu_s=cpu, idle_rss_mb=idle_rss / 1024, peak_rss_mb=peak_rss / 1024,
        )

    async def wait(self, arrived: asyncio.Future[Arrival]) -> Arrival:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(arrived), 1.0)
            except TimeoutError:
                self.dispatcher.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"no delivery event within {self.timeout:.0f} s; the "
                                     "dispatcher's log ends with:\n"
                                     + self.dispatcher.log_tail()) from None

    async def clean_up(self) -> None:
        """Best effort: a failure here is reported, and never hides the run's own error."""
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            (f"delete queue {name}", functools.partial(self.channel.queue_delete, name))
            for name in self.queues
        ]
        steps.append(("delete the deliveries", functools.partial(
            self.pool.execute, "DELETE FROM deliveries WHERE delivery_id = ANY($1)",
            self.delivery_ids)))
        if self.account_id:
            steps.append(("delete the account", functools.partial(
                self.pool.execute, "DELETE FROM accounts WHERE id = $1::uuid", self.account_id)))
        for label, step in steps:
            try:
                await step()
            except Exception as error:
                print(f"clean-up: could not {label}: {error!r}", file=sys.stderr)


# -- the same code in this process ----------------------------------------------------------


def local_costs(account_id: str) -> list[tuple[str, float]]:
    """The CPU work of the dispatcher's own functions, timed here, one request's worth."""
    body = delivery_body(account_id, RECIPIENTS)
    data = orjson.dumps(body)

    def timed(work: Callable[[], Any]) -> tuple[float, Any]:
        started = time.perf_counter()
        result = work()
        return time.perf_counter() - started, result

    decode_s, request = timed(lambda: decode_request(data, None, 32 * 1024 * 1024))
    account = {"id": account_id, "personal": False, "owner": None}
    validate_s, prepared = timed(lambda: prepare(request, account))
    jobs_s, _ = timed(lambda: [
        job_message(request.delivery_id, account_id, i,
                    {"email": r.email, "name": r.name, "vars": r.vars})
        for i, r in enumerate(prepared.recipients)])
    return [("decode (json + pydantic)", decode_s), ("validate (addresses, placeholders)",
                                                     validate_s),
            ("build 100,000 job messages", jobs_s)]


# -- the run --------------------------------------------------------------------------------


def load_average() -> str:
    """The 1-minute load average: other work on the machine shows in every figure."""
    return f"{os.getloadavg()[0]:.2f}"


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(raws: list[RawRun], runs: list[DispatcherRun], job_size: int, request_mb: float,
           window: int, broker: str, local: list[tuple[str, float]], load: str) -> None:
    print(f"{RECIPIENTS:,} recipients, {len(runs)} run(s), RabbitMQ {broker}, fan-out window "
          f"{window:,}, raw confirms {CONFIRM_WINDOW:,} in flight")
    print(f"request {request_mb:.1f} MB, one job {job_size:,} bytes; {os.cpu_count()} CPUs, "
          f"load average {load}\n")
    header = (f"{'run':<7}{'raw jobs/s':>11}{'dispatcher rcpt/s':>19}{'ratio':>8}"
              f"{'peak RSS MB':>13}  | {'publish':>8}{'intake':>8}{'store':>8}{'fan-out':>9}"
              f"{'total':>8}{'disp CPU':>10}")
    print(header)
    print("-" * len(header))

    def line(label: str, raw_rate: float, run: dict[str, float]) -> None:
        print(f"{label:<7}{raw_rate:>11,.0f}{run['rate']:>19,.0f}"
              f"{run['rate'] / raw_rate:>8.1%}{run['peak_rss_mb']:>13,.1f}  | "
              f"{run['publish_s']:>7.2f}s{run['intake_s']:>7.2f}s{run['store_s']:>7.2f}s"
              f"{run['fanout_s']:>8.2f}s{run['seconds']:>7.2f}s{run['cpu_s']:>9.2f}s")

    def fields(run: DispatcherRun) -> dict[str, float]:
        return {**vars(run), "rate": run.rate}

    for number, (raw, run) in enumerate(zip(raws, runs, strict=True), 1):
        line(str(number), raw.rate, fields(run))
    if len(runs) > 1:
        medians = {key: median([fields(run)[key] for run in runs]) for key in fields(runs[0])}
        line("median", median([raw.rate for raw in raws]), medians)
    print()
    print(f"ratio: dispatcher recipients/s over raw jobs/s (goal: >= 70%); dispatcher idle RSS "
          f"before the request {median([r.idle_rss_mb for r in runs]):,.1f} MB; raw client CPU "
          f"{median([r.client_cpu_s for r in raws]):.2f} s of "
          f"{median([r.seconds for r in raws]):.2f} s")
    print("publish: the 100,000-recipient request until its confirm (not in the rate); "
          "intake: confirm -> deliveries row\n(receive, decode, validate); store: -> first "
          "window (COPY, commit, read back); fan-out: -> delivery.accepted here")
    print("\nthe dispatcher's own code in this process, one request's worth:")
    for label, seconds in local:
        print(f"  {label:<36}{seconds:>6.2f} s")


async def run(args: argparse.Namespace) -> None:
    amqp_url, dsn = (os.environ[name] for name in REQUIRED_ENV)
    connection = await aio_pika.connect(amqp_url, timeout=10,
                                        client_properties={"connection_name": "bench"})
    pool = await create_pool(dsn, max_size=2)
    dispatcher, fanout_window = dispatcher_process(args.fanout_window)
    bench: Bench | None = None
    try:
        channel = await open_confirmed_channel(connection)
        bench = Bench(connection, channel, pool, dispatcher, args.timeout)
        await bench.set_up()
        await dispatcher.start(timeout=60)
        server = getattr(connection.transport.connection, "server_properties", None) or {}
        broker = str(server.get("version", "?"))
        _, job_size = bench.raw_job()
        request_mb = len(orjson.dumps(delivery_body(bench.account_id, RECIPIENTS))) / 1e6

        load_before = load_average()
        print(f"warming up ({WARM_UP:,} of each) ...", file=sys.stderr)
        await bench.raw(WARM_UP)
        await bench.dispatch(WARM_UP)
        if not dispatcher.reset_peak_rss():
            print("cannot reset VmHWM: the peak RSS is since the process started",
                  file=sys.stderr)

        raws: list[RawRun] = []
        runs: list[DispatcherRun] = []
        for number in range(1, args.repeat + 1):
            print(f"run {number} of {args.repeat}: raw ...", file=sys.stderr)
            raws.append(await bench.raw(RECIPIENTS))
            print(f"run {number} of {args.repeat}: dispatcher ...", file=sys.stderr)
            runs.append(await bench.dispatch(RECIPIENTS))
        local = local_costs(bench.account_id)
        load = f"{load_before} before, {load_average()} after"
        report(raws, runs, job_size, request_mb, fanout_window, broker, local, load)
    finally:
        await dispatcher.stop()
        try:
            if bench is not None:
                await bench.clean_up()
        finally:
            await pool.close()
            await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (medians printed)")
    parser.add_argument("--fanout-window", type=int, default=None,
                        help="MAIL_FANOUT_WINDOW for the dispatcher (default: its own)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds to wait for one request's event")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    run_benchmark("bench_dispatcher", lambda: run(args))


if __name__ == "__main__":
    main()
