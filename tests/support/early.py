"""Servers a few modules start for themselves (a three-node cluster, a whole stack), started in
the background as the session begins, with those modules moved to its end: their start-up
overlaps the rest of the suite instead of being waited for.

A module names its jobs in `EARLY`: (name, work, cleanup). The jobs run one at a time, in the
order asked (two stacks choosing free ports at once could choose the same). The module takes
a job's result with `take`, which waits for it, or runs the work there and then when the
session did not start it. A job nobody took is cleaned up when the session ends.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TAKE_TIMEOUT_S = 900


@dataclass
class Job:
    name: str
    work: Callable[[], Any]
    cleanup: Callable[[Any], None] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    taken: bool = False

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as error:  # pytest.fail's Failed too: re-raised where it is taken
            self.error = error
        finally:
            self.done.set()


_jobs: dict[str, Job] = {}


def begin(jobs: list[tuple[str, Callable[[], Any], Callable[[Any], None] | None]]) -> None:
    queued = [_jobs.setdefault(name, Job(name, work, cleanup)) for name, work, cleanup in jobs
              if name not in _jobs]

    def run_all() -> None:
        for job in queued:
            job.run()

    threading.Thread(target=run_all, name="early servers", daemon=True).start()


def take(name: str, work: Callable[[], Any]) -> Any:
    """The job's result, once it is there; `work()` here when no job of that name began."""
    job = _jobs.get(name)
    if job is None:
        return work()
    job.taken = True
    if not job.done.wait(TAKE_TIMEOUT_S):
        raise TimeoutError(f"{name} did not start within {TAKE_TIMEOUT_S} s")
    if job.error is not None:
        raise job.error
    return job.result


def finish() -> None:
    """What was started for modules that never took it (deselected, or the session stopped
    first) is removed."""
    for job in _jobs.values():
        unused = not job.taken and job.cleanup is not None
        if unused and job.done.wait(TAKE_TIMEOUT_S) and job.error is None:
            job.cleanup(job.result)
    _jobs.clear()
