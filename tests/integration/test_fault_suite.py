"""The fault suite's short form (`tests/faults/suite.py`) inside `make test`: real dispatcher
and sender processes on a private stack of their own (its RabbitMQ and PostgreSQL are
restarted by the suite, so not the test stack), one row per fault; every row must meet the
goal: 0 lost, doubles only within the accepted window of a killed sender, no pause shorter
than the interval, every recipient settled with its events.

The suite has nothing in common with the test stack, so it runs as a process of its own,
started in the background as the session begins (tests/support/early.py): its two minutes
pass beside the rest of the suite."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.faults.suite import ROOT, Outcome, table
from tests.support import early


def run_short_suite() -> tuple[subprocess.CompletedProcess, list[Outcome]]:
    # Short: the socket path of PostgreSQL lives under it.
    stack_dir = ROOT / ".run" / f"faults-{os.getpid()}"
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "outcomes.json"
        done = subprocess.run(
            [sys.executable, "-m", "tests.faults.suite", "--stack-dir", str(stack_dir),
             "--json", str(results)], cwd=ROOT, capture_output=True, text=True, timeout=900)
        outcomes = ([Outcome(**row) for row in json.loads(results.read_text())]
                    if results.exists() else [])
    return done, outcomes


# Started as the session begins; the module runs last (tests/support/early.py).
EARLY = [("fault suite", run_short_suite, None)]


@pytest.mark.timeout(960)
def test_the_short_fault_suite_meets_its_goal_on_every_row() -> None:
    done, outcomes = early.take("fault suite", run_short_suite)
    print(done.stdout)
    assert outcomes, f"the suite ended with {done.returncode} and no outcome:\n" + (
        done.stderr[-5000:])
    assert len(outcomes) == 8
    missed = [o for o in outcomes if not o.goal_met]
    assert not missed, table(outcomes) + "\n" + done.stderr[-5000:]
    assert done.returncode == 0, done.stderr[-5000:]
