"""Debian's PgBouncer in transaction pooling mode in front of the test stack's PostgreSQL, for
one test module: a server connection per transaction, as in production behind a pooler.

It runs as user postgres (PgBouncer refuses root) from a private folder, on a free loopback
port, and is stopped with the module. `make test` installs the package (deploy/local/stack.py).
"""

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from yarl import URL

from tests.support.processes import free_port

PGBOUNCER = Path("/usr/sbin/pgbouncer")
SERVER_CONNECTIONS = 20  # per database and user: more than the tests hold at once

CONFIG = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {home}/userlist.txt
pool_mode = transaction
default_pool_size = {pool}
max_client_conn = 500
query_wait_timeout = 30
logfile = {home}/pgbouncer.log
pidfile = {home}/pgbouncer.pid
"""


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@contextlib.contextmanager
def pgbouncer(postgres_dsn: str, pool_size: int = SERVER_CONNECTIONS) -> Iterator[str]:
    """PgBouncer in front of `postgres_dsn`'s server; yields the DSN through it."""
    if not PGBOUNCER.exists():
        raise RuntimeError("pgbouncer is not installed: `make test` installs it")
    url = URL(postgres_dsn)
    home = Path(tempfile.mkdtemp(prefix="mail-pgbouncer-"))
    listen = free_port()
    (home / "pgbouncer.ini").write_text(CONFIG.format(
        host=url.host, port=url.port, listen=listen, home=home, pool=pool_size))
    (home / "userlist.txt").write_text(f'"{url.user}" "{url.password}"\n')
    for path in (home, *home.iterdir()):
        shutil.chown(path, "postgres", "postgres")
    process = subprocess.Popen([PGBOUNCER, "-u", "postgres", home / "pgbouncer.ini"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not _answers(listen):
            if process.poll() is not None or time.monotonic() > deadline:
                log = home / "pgbouncer.log"
                raise RuntimeError("pgbouncer did not start: "
                                   + (log.read_text()[-2000:] if log.exists() else "no log"))
            time.sleep(0.05)
        yield str(url.with_port(listen))
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(home, ignore_errors=True)
