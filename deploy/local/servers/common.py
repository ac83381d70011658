"""What every server of the stack uses: running commands, processes, waiting, ports, apt."""

import glob
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

TIMEOUT = 90  # seconds for a server to become ready


class StackError(Exception):
    pass


def run(cmd, *, env=None, cwd=None, stdin_text=None, timeout=120, what=None):
    """Run a command and return its stdout; raise StackError with its error line on failure."""
    # Name the program in messages, never the whole command line: it may hold the password.
    what = what or Path(str(cmd[4] if cmd[0] == "runuser" else cmd[0])).name
    cmd = [str(part) for part in cmd]
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=cwd, input=stdin_text, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"{what}: {exc}") from None
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        line = next((x for x in lines if "error" in x.lower() or x.startswith("E:")), lines[0])
        raise StackError(f"{what} failed: {line.strip()}")
    return proc.stdout


def installed(pattern):
    """The folder matching pattern with the highest version number, or None."""
    paths = glob.glob(pattern)
    if not paths:
        return None
    return Path(max(paths, key=lambda path: [int(n) for n in re.findall(r"\d+", path)])).parent


def write_secret(path, text):
    path.write_text(text)
    path.chmod(0o600)  # it holds the password


# --- processes, read from /proc so that we only ever signal processes proven to be ours ---


def proc_read(pid, name):
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode("latin-1")
    except OSError:
        return ""


def live_processes():
    """(pid, process group) of every process that is not a zombie."""
    for pid in (int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
        fields = proc_read(pid, "stat").rpartition(")")[2].split()  # state, ppid, pgrp, ...
        if fields and fields[0] != "Z":
            yield pid, int(fields[2])


def pid_alive(pid):
    return any(p == pid for p, _ in live_processes())


def group_alive(pgid):
    return any(group == pgid for _, group in live_processes())


def wait_until(condition, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def spawn(cmd, log_path, **kwargs):
    """Start cmd in the background in a new session (setsid); output appended to log_path."""
    with open(log_path, "ab") as log:
        out = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": log}
        return subprocess.Popen(cmd, start_new_session=True, **out, **kwargs)


def log_tail(*paths):
    for path in paths:
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()[-15:]
            print(f"--- end of {path} ---", *lines, sep="\n", file=sys.stderr)


# --- ports ---


def port_is_free(port):
    # Binding the wildcard address also detects a listener on any single address.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - a probe, closed at once
        except OSError:
            return False
    return True


def any_free_port(taken):
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def answers(port, request, check):
    """True when the server on port replies to request with bytes that pass check."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(request)
            return check(sock.recv(4))
    except OSError:
        return False


# --- packages ---


def apt_busy():
    return any(proc_read(pid, "comm").strip() in ("apt-get", "dpkg") for pid, _ in live_processes())


def wait_for_apt(message=None):
    """Return once no apt-get or dpkg runs; message is printed first when one does."""
    if not apt_busy():
        return
    if message:
        print(message, flush=True)
    if not wait_until(lambda: not apt_busy(), 1200, 2):
        raise StackError("apt-get/dpkg still running after 20 minutes")


def apt_install(packages):
    print(f"stack: installing {' '.join(packages)} with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], env=env, timeout=900)
    run(["apt-get", "install", "-y", *packages], env=env, timeout=1800)
