"""Throttling that converges: a provider allowing N messages in any W seconds (aiosmtpd, 421 at
MAIL beyond it), one account at interval 0, real dispatcher and sender processes. Printed for
each (N, W): the delivery time beside the provider's floor (bursts of N, one window apart:
the fastest its window allows, computed) and the refusals, all and after the first window.

    make bench    (or, with a stack's settings loaded: python bench/bench_throttle.py)

Goal of the issue: within 1.25x of the floor, at most one refusal per window after the first.
The sender's retry delays are 1 and 2 s here (production: 30 s and more), so that a deferred
recipient is back in the queue within the delivery.
"""

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service_process import run_benchmark
from tests.faults.suite import PASSWORD, USER, Run, Suite
from tests.support.smtp_servers import SmtpTestServer

CASES = [(5, 10.0, 25), (10, 5.0, 60), (3, 2.0, 30)]  # (N, W seconds, recipients)


async def one(suite: Suite, limit: int, window_s: float, total: int) -> dict:
    await suite.pool.execute("UPDATE accounts SET deleted_at = now() WHERE deleted_at IS NULL;"
                             " DELETE FROM sender_replicas")
    server = SmtpTestServer(users={USER: PASSWORD}, rate_limit=(limit, window_s))
    await server.start()
    run = Run(suite, (total,))
    account_id = await suite.add_account(server, 0)
    run.servers[account_id] = server
    run.intervals[account_id] = 0
    await run.start_dispatcher()
    await run.start_sender()
    try:
        started = time.monotonic()
        delivery_id = await suite.publish_delivery(account_id, total)
        run.deliveries[delivery_id] = account_id
        while len(server.messages) < total:
            if time.monotonic() - started > 60 + 10 * total:
                raise TimeoutError(f"{len(server.messages)} of {total} after a long time")
            await asyncio.sleep(0.05)
        first = min(m.started_at for m in server.messages)
        last = max(m.ended_at for m in server.messages)
        refusals = server.refused_by_rate
        # After the first window: what the learnt pace still costs.
        later = sum(1 for at in server.refused_at if at > first + window_s)
        windows = max(1, round((last - first - window_s) / window_s))
    finally:
        await run.stop_all()
        await server.stop()
    took = last - first
    floor = (total - 1) // limit * window_s
    return {"took": took, "floor": floor, "refusals": refusals, "later": later,
            "windows": windows}


async def main() -> None:
    stack_dir = Path(os.environ["MAIL_STACK_DIR"])
    suite = Suite(stack_dir, Path(tempfile.mkdtemp(prefix="bench-throttle-")))
    await suite.open()
    try:
        print("| provider limit | recipients | floor | delivery | ratio | refusals | "
              "after the first window |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for limit, window_s, total in CASES:
            figures = await one(suite, limit, window_s, total)
            print(f"| {limit} in {window_s:g} s | {total} | {figures['floor']:.1f} s "
                  f"| {figures['took']:.1f} s | {figures['took'] / figures['floor']:.2f}x "
                  f"| {figures['refusals']} | {figures['later']} in {figures['windows']} "
                  "windows |", flush=True)
    finally:
        await suite.close()


if __name__ == "__main__":
    run_benchmark("bench_throttle", main)
