"""Postfix's smtp-sink for the benchmarks: installed when missing, started on a free loopback
port, stopped by its own pid.

smtp-sink is a single-process SMTP server that accepts and discards every mail, several times
faster than any Python server (aiosmtpd takes ~700-800 mails/s on a machine where smtp-sink
takes ~8,500), so the benchmarks measure the client, not the server.

    with SmtpSink() as sink:          # or: sink = SmtpSink(); sink.start(); ...; sink.stop()
        ... 127.0.0.1:sink.port ...

Only the `smtp-sink` tool of the `postfix` package is used: the Postfix mail system itself is
never started (on Debian, `policy-rc.d` keeps the package's install from starting it too). The
install needs root and Debian's apt, as the rest of the local stack does.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from bench.procstats import free_port

__all__ = ["SmtpSink", "SmtpSinkError", "ensure_installed", "smtp_sink_path"]

_CANDIDATES = ("/usr/sbin/smtp-sink", "/usr/local/sbin/smtp-sink")
_DEBCONF = "postfix postfix/main_mailer_type select No configuration\n"
_APT_LOCK_WAIT_S = 300


class SmtpSinkError(Exception):
    """smtp-sink could not be installed, started or reached."""


def smtp_sink_path() -> str | None:
    found = shutil.which("smtp-sink")
    if found:
        return found
    return next((path for path in _CANDIDATES if os.access(path, os.X_OK)), None)


def _run(command: list[str], what: str, stdin: str | None = None, timeout: float = 900) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SmtpSinkError(f"{what}: {error}") from None
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise SmtpSinkError(f"{what} failed (exit {done.returncode}): {lines[-1]}")


def ensure_installed(log: bool = True) -> str:
    """The path of smtp-sink, installing Debian's `postfix` package first when it is missing
    (non-interactively, "No configuration", so nothing is set up or started)."""
    path = smtp_sink_path()
    if path:
        return path
    if os.geteuid() != 0:
        raise SmtpSinkError("smtp-sink is missing and installing postfix needs root: run "
                            "`apt-get install postfix` (\"No configuration\") first")
    if shutil.which("apt-get") is None:
        raise SmtpSinkError("smtp-sink is missing and there is no apt-get to install postfix")
    if log:
        print("smtp-sink missing: installing Debian's postfix package (No configuration; the "
              "mail system is not started) ...", flush=True)
    _run(["debconf-set-selections"], "debconf-set-selections", stdin=_DEBCONF)
    install = ["apt-get", "-o", f"DPkg::Lock::Timeout={_APT_LOCK_WAIT_S}", "install", "-y",
               "--no-install-recommends", "postfix"]
    try:
        _run(install, "apt-get install postfix")
    except SmtpSinkError:
        # Package lists may be missing or stale on a fresh machine: refresh once, try again.
        _run(["apt-get", "-o", f"DPkg::Lock::Timeout={_APT_LOCK_WAIT_S}", "update"],
             "apt-get update")
        _run(install, "apt-get install postfix")
    path = smtp_sink_path()
    if not path:
        raise SmtpSinkError("postfix is installed but smtp-sink is not found")
    return path


class SmtpSink:
    """One smtp-sink process on 127.0.0.1 (a free port unless one is given)."""

    def __init__(self, port: int | None = None, backlog: int = 1024,
                 max_concurrency: int = 1024, extra_args: tuple[str, ...] = ()) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.backlog = backlog
        # smtp-sink serves 256 connections at once unless told otherwise (-m): one more
        # client then waits for its greeting until it times out.
        self.max_concurrency = max_concurrency
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="bench-smtp-sink-", suffix=".log")

    @property
    def pid(self) -> int:
        if self.process is None:
            raise SmtpSinkError("smtp-sink is not started")
        return self.process.pid

    def log_tail(self, lines: int = 10) -> str:
        text = Path(self._log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def start(self, timeout: float = 10) -> "SmtpSink":
        path = ensure_installed()
        # It refuses to run as root unless told which user to become.
        command = [path, *(["-u", "nobody"] if os.geteuid() == 0 else []),
                   "-m", str(self.max_concurrency), *self.extra_args,
                   f"{self.host}:{self.port}", str(self.backlog)]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise SmtpSinkError(f"smtp-sink exited (code {self.process.returncode}): "
                                    + self.log_tail())
            if self._greets():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise SmtpSinkError(f"smtp-sink did not answer on port {self.port} within "
                                    f"{timeout:.0f} s")
            time.sleep(0.05)

    def _greets(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                greeting = sock.recv(512)
                sock.sendall(b"QUIT\r\n")
                return greeting.startswith(b"220")
        except OSError:
            return False

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise SmtpSinkError(f"smtp-sink is not running (exit code {code})")

    def stop(self) -> None:
        """SIGTERM to our own process (by pid), SIGKILL if it lingers; never raises."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self._log.close()

    def __enter__(self) -> "SmtpSink":
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    # `python bench/smtp_sink.py`: install when missing, then check that it starts and stops.
    with SmtpSink() as sink:
        print(f"smtp-sink {ensure_installed(log=False)} answered on {sink.host}:{sink.port} "
              f"(pid {sink.pid})")
