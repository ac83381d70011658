"""Urgent mail on a busy account: one account at 200 ms with 5,000 normal jobs queued, 50
urgent one-recipient requests (`priority: high`) published at random moments; real
dispatcher and sender processes, an aiosmtpd server.

    make bench    (or, with a stack's settings loaded: python bench/bench_priority.py)

For each urgent mail: from its publish to its 250 at the server, beside its floor, measured
in the same run: the pause still to run when it was published (from the end of the
transaction on the wire or last ended, at the server) plus its own transaction. Goal of the
issue: every urgent mail within one interval plus 50 ms of its publish. The baseline of a
normal request is printed too: the wait behind what is still queued.
"""

import asyncio
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service_process import run_benchmark
from shared.topology import make_message, publish
from tests.faults.suite import PASSWORD, USER, Run, Suite
from tests.support.smtp_servers import SmtpTestServer

INTERVAL_MS = 200
BULK = 5000
URGENT = 50
GAP_S = (0.3, 1.7)  # between two urgent publishes, uniformly


async def publish_urgent(suite: Suite, account_id: str, index: int) -> str:
    delivery_id = f"bench-urgent-{index}-{time.monotonic_ns()}"
    body = {"delivery_id": delivery_id, "account_id": account_id, "priority": "high",
            "subject": "your code {{code}}", "text": "code {{code}}",
            "recipients": [{"email": f"urgent{index}@example.com",
                            "vars": {"code": f"{index:06d}"}}]}
    exchange = await suite.channel.get_exchange(suite.topology.requests_exchange)
    await publish(exchange, "delivery.request",
                  make_message(orjson.dumps(body), message_id=delivery_id))
    return delivery_id


def pct(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def main() -> None:
    stack_dir = Path(os.environ["MAIL_STACK_DIR"])
    suite = Suite(stack_dir, Path(tempfile.mkdtemp(prefix="bench-priority-")))
    await suite.open()
    random.seed(13)
    try:
        await suite.pool.execute("UPDATE accounts SET deleted_at = now() "
                                 "WHERE deleted_at IS NULL; DELETE FROM sender_replicas")
        server = SmtpTestServer(users={USER: PASSWORD})
        await server.start()
        run = Run(suite, (BULK,))
        account_id = await suite.add_account(server, INTERVAL_MS)
        run.servers[account_id] = server
        await run.start_dispatcher()
        await run.start_sender()
        try:
            await suite.publish_delivery(account_id, BULK)
            await run.until_received(5 / BULK, timeout=60)
            published: dict[str, float] = {}
            for index in range(URGENT):
                await asyncio.sleep(random.uniform(*GAP_S))
                published[f"urgent{index}@example.com"] = time.monotonic()
                await publish_urgent(suite, account_id, index)
            deadline = time.monotonic() + 30
            while not all(any(m.rcpt_tos == [r] for m in server.messages) for r in published):
                if time.monotonic() > deadline:
                    raise TimeoutError("not every urgent mail arrived")
                await asyncio.sleep(0.05)
            messages = list(server.messages)
        finally:
            await run.stop_all()
            await server.stop()
    finally:
        await suite.close()

    interval = INTERVAL_MS / 1000
    latency, floor, excess = [], [], []
    for rcpt, at in published.items():
        mail = next(m for m in messages if m.rcpt_tos == [rcpt])
        before = [m for m in messages if m.started_at <= at and m is not mail]
        previous = max(before, key=lambda m: m.started_at)
        remaining = max(0.0, previous.ended_at + interval - at)
        latency.append(mail.ended_at - at)
        floor.append(remaining + (mail.ended_at - mail.started_at))
        excess.append(latency[-1] - floor[-1])
    bulk_sent = sum(1 for m in messages if m.rcpt_tos[0].startswith("r"))
    ms = 1000
    goal = interval + 0.050
    print(f"one account at {INTERVAL_MS} ms, {BULK} normal jobs queued, {URGENT} urgent "
          f"requests at random moments ({bulk_sent} normal mails sent meanwhile)")
    print("| publish -> 250 | p50 | p95 | max |")
    print("|---|---:|---:|---:|")
    print(f"| urgent mail | {statistics.median(latency) * ms:.0f} ms "
          f"| {pct(latency, 0.95) * ms:.0f} ms | {max(latency) * ms:.0f} ms |")
    print(f"| floor (pause left + its transaction) | {statistics.median(floor) * ms:.0f} ms "
          f"| {pct(floor, 0.95) * ms:.0f} ms | {max(floor) * ms:.0f} ms |")
    print(f"| above the floor | {statistics.median(excess) * ms:.1f} ms "
          f"| {pct(excess, 0.95) * ms:.1f} ms | {max(excess) * ms:.1f} ms |")
    late = sum(1 for value in excess if value > interval / 2)
    print(f"a normal job took the turn first (the pause ended while the urgent request was "
          f"still on its way through the dispatcher): {late} of {URGENT}")
    within = sum(1 for value in latency if value <= goal)
    print(f"within one interval + 50 ms ({goal * ms:.0f} ms): {within} of {URGENT}")
    gaps = [b.started_at - a.ended_at for a, b in itertools.pairwise(messages)]
    print(f"shortest pause at the server: {min(gaps) * ms:.1f} ms (interval {INTERVAL_MS} ms)")
    left = BULK - bulk_sent
    print(f"baseline, a normal request published at the end: behind {left} jobs, "
          f"about {left * interval / 60:.0f} min")


if __name__ == "__main__":
    run_benchmark("bench_priority", main)
