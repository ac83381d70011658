"""`make run`: the private stack, the mail catcher, migrations, then every service in the
foreground with its lines prefixed by its name, each listening on 127.0.0.1 only. Ctrl-C
stops everything it started. A service that dies stops the stack too (a demo should not
limp on without its sender), with the service's exit code and last lines on the terminal.
"""

import asyncio
import collections
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from shared.auth import ADMIN_ROLE, issue_token
from shared.crypto import SecretBox

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / ".run" / "stack"
MAIL_DIR = ROOT / ".run" / "mail"
# Services in start order, with the HTTP port each serves its API and probes on.
SERVICES = {"config_svc": 8080, "dispatcher": 8081, "sender": 8082}
COLOURS = {"catcher": 35, "config_svc": 36, "dispatcher": 33, "sender": 32}
LAST_LINES = 20
# Each service's last lines, shown when it dies.
TAILS: dict[str, collections.deque] = collections.defaultdict(
    lambda: collections.deque(maxlen=LAST_LINES))


def free_port(preferred: int) -> int:
    """`preferred` when the server can bind it, else a free one. Checked as the servers bind
    (uvicorn and asyncio set SO_REUSEADDR): connections of a stack stopped a moment ago,
    left in TIME_WAIT, do not make the port taken."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen = sock.getsockname()[1]
        if chosen != preferred:
            print(f"run: port {preferred} is taken, using {chosen}", flush=True)
        return chosen
    raise RuntimeError("no free port")


def service_env(env: dict[str, str], port: int) -> dict[str, str]:
    """A service's settings under `make run`: loopback only (containers keep 0.0.0.0)."""
    return {**env, "MAIL_HTTP_PORT": str(port), "MAIL_HTTP_HOST": "127.0.0.1"}


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def local_secrets() -> dict[str, str]:
    """The JWT secret and encryption key of the local stack, made once and kept in .run/."""
    path = STACK / "secrets.env"
    if not path.exists():
        path.write_text(
            f"MAIL_JWT_SECRET={secrets.token_urlsafe(32)}\n"
            f"MAIL_FERNET_KEYS={SecretBox.generate_key()}\n"
        )
        path.chmod(0o600)
    return read_env(path)


async def register_catcher_account(api_port: int, token: str, catcher_port: int) -> None:
    """On first start, a default account that sends to the mail catcher."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as client:
        for _ in range(300):  # up to 30 s for the service to become ready
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        query = {"q": "Local mail catcher", "match": "all"}
        listing = (await client.get("/v1/accounts", params=query, headers=headers)).json()
        catcher = next((a for a in listing["items"] if a["name"] == "Local mail catcher"), None)
        if catcher is None:
            response = await client.post("/v1/accounts", headers=headers, json={
                "name": "Local mail catcher", "from_address": "noreply@example.com",
                "from_name": "mail-delivery (local)", "smtp_host": "127.0.0.1",
                "smtp_port": catcher_port, "tls": "none", "send_interval_ms": 100,
                "is_default": True,
            })
            response.raise_for_status()
            print(f"run: registered the default account {response.json()['id']} "
                  "(the mail catcher)", flush=True)
        else:
            # The catcher may have a new port this time.
            await client.patch(f"/v1/accounts/{catcher['id']}", headers=headers,
                               json={"smtp_port": catcher_port})


def existing_services() -> list[str]:
    return [name for name in SERVICES if (ROOT / "services" / name / "__main__.py").exists()]


async def pipe_lines(name: str, stream: asyncio.StreamReader) -> None:
    prefix = f"\x1b[{COLOURS.get(name, 37)}m{name:>10} |\x1b[0m " if sys.stdout.isatty() else (
        f"{name:>10} | ")
    async for line in stream:
        text = line.decode(errors="replace")
        TAILS[name].append(text)
        sys.stdout.write(prefix + text)
        sys.stdout.flush()


async def start(name: str, args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    asyncio.create_task(pipe_lines(name, process.stdout))  # noqa: RUF006 - lives as long as it
    return process


async def run_stack(env: dict[str, str]) -> int:
    processes: dict[str, asyncio.subprocess.Process] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    catcher_port = free_port(2525)
    env["MAIL_LOCAL_CATCHER_PORT"] = str(catcher_port)
    processes["catcher"] = await start(
        "catcher",
        [sys.executable, "-m", "deploy.local.mailcatcher", "--dir", str(MAIL_DIR),
         "--port", str(catcher_port)],
        env,
    )
    for name in existing_services():
        migrate = subprocess.run(  # noqa: ASYNC221 - start-up, before anything else runs
            [sys.executable, "-m", f"services.{name}", "migrate"], cwd=ROOT, env=env, check=False
        )
        if migrate.returncode != 0:
            print(f"run: migrations of {name} failed", flush=True)
            stop.set()
            break
        port = free_port(SERVICES[name])
        processes[name] = await start(name, [sys.executable, "-m", f"services.{name}"],
                                      service_env(env, port))
        if name == "config_svc":
            token = issue_token(env["MAIL_JWT_SECRET"], "make-run", [ADMIN_ROLE])
            await register_catcher_account(port, token, catcher_port)
            print(f"run: accounts API on http://127.0.0.1:{port}/docs; an admin token "
                  f"for 12 h:\n{token}", flush=True)
    print(f"run: mail caught by the catcher lands in {MAIL_DIR.relative_to(ROOT)}/; "
          "Ctrl-C stops everything", flush=True)

    waits = {asyncio.create_task(p.wait()): n for n, p in processes.items()}
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if stopper not in done:
        ended = next(waits[task] for task in done)
        code = processes[ended].returncode or 1
        await asyncio.sleep(0.2)  # its last lines through the pipe
        print(f"\nrun: {ended} died (exit code {processes[ended].returncode}); its last lines:",
              flush=True)
        for line in TAILS[ended]:
            sys.stdout.write(f"  {line}")
        print("run: stopping the rest of the stack (`make run` again restarts it)", flush=True)
    for process in reversed(processes.values()):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    for name, process in processes.items():
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            print(f"run: {name} did not stop in 30 s; killing it", flush=True)
            process.kill()
    stopper.cancel()
    return code


def main() -> None:
    up = subprocess.run(
        [sys.executable, str(ROOT / "deploy/local/stack.py"), "up", "--dir", str(STACK),
         "--ports", "default"], check=False,
    )
    if up.returncode != 0:
        sys.exit(up.returncode)
    try:
        env = {**os.environ, **read_env(STACK / "env"), **local_secrets()}
        code = asyncio.run(run_stack(env))
    finally:
        subprocess.run(
            [sys.executable, str(ROOT / "deploy/local/stack.py"), "down", "--dir", str(STACK)],
            check=False,
        )
    sys.exit(code)


if __name__ == "__main__":
    main()
