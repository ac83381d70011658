"""The fault suite's short form (`tests/faults/suite.py`) inside `make test`: real dispatcher
and sender processes on a private stack of their own (its RabbitMQ and PostgreSQL are
restarted by the suite, so not the test stack), one row per fault; every row must meet the
goal: 0 lost, doubles only within the accepted window of a killed sender, no pause shorter
than the interval, every recipient settled with its events."""

import os
from pathlib import Path

import pytest

from tests.faults.suite import ROOT, run_suite, stack_down, stack_up, table
from tests.support import early


def start_stack() -> Path:
    # Short: the socket path of PostgreSQL lives under it.
    stack_dir = ROOT / ".run" / f"faults-{os.getpid()}"
    stack_down(stack_dir)
    stack_up(stack_dir)
    return stack_dir


# Started as the session begins; the module runs last (tests/support/early.py).
EARLY = [("fault stack", start_stack, stack_down)]


@pytest.mark.timeout(900)
async def test_the_short_fault_suite_meets_its_goal_on_every_row(tmp_path: Path) -> None:
    stack_dir = early.take("fault stack", start_stack)
    try:
        outcomes = await run_suite(False, stack_dir, tmp_path)
    finally:
        stack_down(stack_dir)
    print(table(outcomes))
    assert len(outcomes) == 8
    missed = [o for o in outcomes if not o.goal_met]
    assert not missed, table(outcomes)
