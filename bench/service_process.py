"""The service processes the benchmarks start: `python -m services.<name>` on its own port,
with its own settings, its log in a temporary file, ready when its `/readyz` says so."""

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from bench.procstats import free_port

ROOT = Path(__file__).resolve().parents[1]


REQUIRED_ENV = ("MAIL_AMQP_URL", "MAIL_POSTGRES_DSN")


class BenchError(Exception):
    """The benchmark could not run (not a slow result: figures are never judged here)."""


def run_benchmark(name: str, run: Callable[[], Awaitable[None]],
                  errors: tuple[type[Exception], ...] = ()) -> None:
    """Runs a benchmark on the stack its environment names: exit 2 when none is named, 1 when
    it could not run (its reason on stderr), 0 otherwise, whatever the figures."""
    missing = [variable for variable in REQUIRED_ENV if not os.environ.get(variable)]
    if missing:
        print(f"{name}: {', '.join(missing)} not set: run `make bench`, or load a running "
              "stack's settings first (set -a; . .run/stack/env; set +a)", file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(run())
    except (BenchError, *errors) as error:
        print(f"{name}: {error}", file=sys.stderr)
        sys.exit(1)


def metric_values(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sums of the named Prometheus samples (every label set) in an exposition text."""
    found = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in found:
            found[name] += float(line.rsplit(" ", 1)[1])
    return found


class ServiceProcess:
    """`python -m services.<name>` with its own settings, its log in a temporary file."""

    def __init__(self, name: str, settings: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**os.environ, "MAIL_HTTP_HOST": "127.0.0.1", "MAIL_HTTP_PORT": str(self.port),
                    "MAIL_LOG_LEVEL": "warning", "MAIL_LOG_FORMAT": "json", **settings}
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix=f"bench-{name}-", suffix=".log")
        self.process: asyncio.subprocess.Process | None = None
        self.ready_after_s = math.nan
        self.stopped = False

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError(f"the {self.name} is not started")
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        if self.process is None or self.process.returncode is not None:
            code = None if self.process is None else self.process.returncode
            raise BenchError(f"the {self.name} exited (code {code}); its log ends with:\n"
                             + self.log_tail())

    async def start(self, timeout: float) -> None:
        started = time.perf_counter()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{self.name}", cwd=ROOT, env=self.env,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                self.check_alive()
                with contextlib.suppress(httpx.TransportError):
                    answer = await client.get(f"http://127.0.0.1:{self.port}/readyz")
                    if answer.status_code == 200:
                        self.ready_after_s = time.perf_counter() - started
                        return
                if time.monotonic() > deadline:
                    raise BenchError(f"the {self.name} was not ready within {timeout:.0f} s; "
                                     "its log ends with:\n" + self.log_tail())
                await asyncio.sleep(0.2)

    def reset_peak_rss(self) -> bool:
        """Resets VmHWM to the current RSS (Linux: 5 > /proc/<pid>/clear_refs)."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    async def metrics_text(self) -> str:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(f"http://127.0.0.1:{self.port}/metrics")
            answer.raise_for_status()
        return answer.text

    async def metrics(self, *names: str) -> dict[str, float]:
        return metric_values(await self.metrics_text(), names)

    async def stop(self, timeout: float = 60) -> None:
        """SIGTERM (graceful), then SIGKILL after `timeout`; only our own child, by pid."""
        if self.stopped:
            return
        self.stopped = True
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                print(f"the {self.name} did not stop within {timeout:.0f} s of SIGTERM: killed",
                      file=sys.stderr)
                process.kill()
                await process.wait()
        self.log.close()
