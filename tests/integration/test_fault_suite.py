"""The fault suite's short form (`tests/faults/suite.py`) inside `make test`: real dispatcher
and sender processes on a private stack of their own (its RabbitMQ and PostgreSQL are
restarted by the suite, so not the test stack), one row per fault; every row must meet the
goal: 0 lost, doubles only within the accepted window of a killed sender, no pause shorter
than the interval, every recipient settled with its events."""

import os
from pathlib import Path

import pytest

from tests.faults.suite import ROOT, run_suite, stack_down, stack_up, table


@pytest.mark.timeout(900)
async def test_the_short_fault_suite_meets_its_goal_on_every_row(tmp_path: Path) -> None:
    # Short: the socket path of PostgreSQL lives under it.
    stack_dir = ROOT / ".run" / f"faults-{os.getpid()}"
    stack_down(stack_dir)
    stack_up(stack_dir)
    try:
        outcomes = await run_suite(False, stack_dir, tmp_path)
    finally:
        stack_down(stack_dir)
    print(table(outcomes))
    assert len(outcomes) == 8
    missed = [o for o in outcomes if not o.goal_met]
    assert not missed, table(outcomes)
