"""A service as a real process for the tests: `python -m <module>` with its own environment
and port, its log in a file, ready when its `/readyz` answers 200."""

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.waiting import eventually

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    def __init__(self, module: str, env: dict[str, str], log_path: Path,
                 name: str | None = None) -> None:
        self.module = module
        self.name = name or module
        self.port = free_port()
        self.env = {**os.environ, "MAIL_LOG_LEVEL": "warning", **env,
                    "MAIL_HTTP_PORT": str(self.port), "MAIL_HTTP_HOST": "127.0.0.1",
                    "MAIL_LOG_FORMAT": "json"}
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, env=self.env, cwd=ROOT,
                stdout=log, stderr=log)

        async def ready() -> bool:
            assert self.process is not None
            if self.process.returncode is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode} while "
                            f"starting:\n{self.log_tail()}")
            try:
                async with httpx.AsyncClient(timeout=1) as client:
                    return (await client.get(f"{self.base_url}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, timeout=timeout, interval=0.05)

    def tcp_ports(self) -> set[int]:
        """The local ports of the process's TCP sockets (from /proc): which of several
        processes a server's client is."""
        assert self.process is not None
        inodes = set()
        for fd in Path(f"/proc/{self.process.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rpartition(":")[2], 16))
        return ports

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout=timeout)

    async def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`: the exit code of a graceful stop, None when
        it had to be killed (or never started)."""
        if self.process is None or self.process.returncode is not None:
            return self.process.returncode if self.process else None
        self.signal(signal.SIGTERM)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            await self.kill()
            return None

    async def kill(self) -> None:
        """SIGKILL and reap (a no-op for a process already gone)."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()

    async def metric(self, name: str) -> float | None:
        """A metric without labels from the process's /metrics; None when not there."""
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(f"{self.base_url}/metrics")
        for line in response.text.splitlines():
            metric, _, value = line.partition(" ")
            if metric == name:
                return float(value)
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logged(self, event: str) -> bool:
        """Whether the process logged a line with this `event` (JSON lines)."""
        needle = orjson.dumps({"event": event})[1:-1].decode()  # "event":"..."
        return needle in self.log()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:]) or "(no log)"
