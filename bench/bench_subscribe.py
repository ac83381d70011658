"""A sender starting on many accounts whose queues already hold jobs (issue 16, §3): how long
until it consumes every account (ready), and until every account has sent its first mail.

N accounts (default 2,000) at 4,000 ms on smtp-sink, two jobs waiting in each one's queue
(one two-recipient request each, through the dispatcher, before any sender runs). Then one
sender process starts. Beside it, in the same run: the same subscriptions (declare, bind,
consume both queues of each account, prefetch 1) made by a bare aio-pika loop, one after
the other on channels of 100 consumers, and over those channels at once: the broker's floor.

    python bench/bench_subscribe.py [--accounts N]
"""

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aio_pika

from bench.bench_sender import QUICK, Bench, request_body
from bench.procstats import proc_status
from bench.service_process import run_benchmark
from bench.smtp_sink import SmtpSinkError

INTERVAL_MS = 4_000
PER_CHANNEL = 100


async def bare_subscriptions(bench: Bench, ids: list[str], together: bool) -> float:
    """Seconds to declare, bind and consume every account's two queues; the messages the
    consumers get are left unacked (they go back when the connection closes)."""
    assert bench.connection is not None
    channels: list[aio_pika.abc.AbstractChannel] = []
    try:
        groups = [ids[i:i + PER_CHANNEL] for i in range(0, len(ids), PER_CHANNEL)]
        for _ in groups:
            channel = await bench.connection.channel()
            await channel.set_qos(prefetch_count=1)
            channels.append(channel)

        async def on_message(_message: object) -> None:
            return None

        async def subscribe(channel: aio_pika.abc.AbstractChannel, group: list[str]) -> None:
            for account_id in group:
                queue, urgent = await bench.topology.declare_account_queues(channel,
                                                                            account_id)
                await urgent.consume(on_message)
                await queue.consume(on_message)

        started = time.perf_counter()
        if together:
            await asyncio.gather(*(subscribe(c, g) for c, g in zip(channels, groups,
                                                                    strict=True)))
        else:
            for channel, group in zip(channels, groups, strict=True):
                await subscribe(channel, group)
        return time.perf_counter() - started
    finally:
        for channel in channels:  # its messages go back to their queues
            await channel.close()


async def run(accounts: int) -> None:
    # One SMTP session per account open at once: smtp-sink takes them all.
    bench = Bench(dataclasses.replace(QUICK, accounts=accounts))
    try:
        await bench.set_up()
        ids = await bench.create_accounts(accounts, INTERVAL_MS)
        bodies = [request_body(account_id, 2, "subscribe") for account_id in ids]
        await bench.publish_requests(bodies)
        assert bench.pool is not None

        async def accepted() -> int:
            return await bench.pool.fetchval(
                "SELECT count(*) FROM deliveries WHERE delivery_id = ANY($1) "
                "AND accepted_at IS NOT NULL", bench.deliveries)

        deadline = time.monotonic() + 600
        while await accepted() < accounts:
            if time.monotonic() > deadline:
                raise SystemExit("the requests were not all accepted within 10 minutes")
            await asyncio.sleep(0.5)
        print(f"{accounts} accounts at {INTERVAL_MS:,} ms, 2 jobs waiting in each queue")

        one_by_one = await bare_subscriptions(bench, ids, together=False)
        together = await bare_subscriptions(bench, ids, together=True)

        started = time.perf_counter()
        sender = await bench.start_sender(timeout=600)
        ready_s = sender.ready_after_s
        while True:
            sending = await bench.pool.fetchval(
                "SELECT count(DISTINCT account_id) FROM account_sends "
                "WHERE account_id = ANY($1::uuid[])", ids)
            if sending >= accounts:
                break
            if time.perf_counter() - started > 600:
                raise SystemExit(f"only {sending} accounts sent within 10 minutes")
            await asyncio.sleep(0.1)
        first_mail_s = time.perf_counter() - started
        rss = proc_status(sender.process.pid).get("VmRSS", 0)  # type: ignore[union-attr]
        print(f"the sender: ready (consuming every account) {ready_s:.1f} s after its start; "
              f"every account's first mail sent after {first_mail_s:.1f} s; "
              f"RSS {rss / 1024:.0f} MB")
        print(f"baseline, a bare aio-pika loop, the same subscriptions: one after the other "
              f"{one_by_one:.1f} s; over {len(ids) // PER_CHANNEL or 1} channels at once "
              f"{together:.1f} s")
        await sender.stop()
    finally:
        await bench.clean_up()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=2_000)
    args = parser.parse_args()
    run_benchmark("bench_subscribe", lambda: run(args.accounts), (SmtpSinkError,))


if __name__ == "__main__":
    main()
