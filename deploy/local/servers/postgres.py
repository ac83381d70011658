"""PostgreSQL: the stack's private cluster, run as user postgres, database and role mail."""

import shutil
import subprocess

from .common import TIMEOUT, StackError, installed, log_tail, run, wait_until

PG_BIN = "/usr/lib/postgresql/*/bin"


def pg_bin():
    return installed(PG_BIN + "/initdb")


def as_postgres(*cmd):
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd]


def place_pg_home(stack):
    """Move the data out of DIR, once, when user postgres cannot enter it."""
    if (not stack.pg_home_record.exists()
            and subprocess.run(as_postgres("test", "-x", stack.dir)).returncode != 0):
        # A parent only root may enter: PostgreSQL's data go where postgres can reach them.
        home = stack.pg_home_outside
        home.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(home, "postgres", "postgres")
        home.chmod(0o700)
        stack.pg_home_record.write_text(f"{home}\n")
        stack.pgdata, stack.pgrun = home / "postgres", home / "postgres-run"
        print(f"stack: user postgres cannot enter {stack.dir}; its data live in {home}")


def pg_running(stack):
    if not pg_bin() or not (stack.pgdata / "PG_VERSION").exists():
        return False
    cmd = as_postgres(pg_bin() / "pg_ctl", "status", "-D", stack.pgdata)
    return subprocess.run(cmd, capture_output=True, cwd=stack.dir).returncode == 0


def pg_answers(port):
    cmd = [pg_bin() / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def init_postgres(stack):
    for path in (stack.pgdata, stack.pgrun):
        path.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(path, "postgres", "postgres")
    if not (stack.pgdata / "PG_VERSION").exists():
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256"]  # TCP needs the password
        initdb = [pg_bin() / "initdb", "-D", stack.pgdata, "--no-sync", "-U", "postgres", *auth]
        run(as_postgres(*initdb, "-E", "UTF8", "--locale=C.UTF-8"), cwd=stack.dir)


def start_postgres(stack):
    init_postgres(stack)
    log = stack.pgrun / "postgres.log"
    if not pg_running(stack):
        port = stack.ports["postgres"]
        options = f"-p {port} -k {stack.pgrun} -c listen_addresses=127.0.0.1"
        pg_ctl = [pg_bin() / "pg_ctl", "-w", "-t", TIMEOUT, "-D", stack.pgdata, "-o", options]
        try:
            run(as_postgres(*pg_ctl, "-l", log, "start"), cwd=stack.dir, timeout=TIMEOUT + 10)
        except StackError:
            log_tail(log)
            raise
    if not wait_until(lambda: pg_answers(stack.ports["postgres"]), TIMEOUT, 0.3):
        log_tail(log)
        raise StackError(f"PostgreSQL does not answer on port {stack.ports['postgres']}")


def psql(stack, sql):
    """Run SQL as postgres over the private unix socket (trusted); return the output."""
    where = ["-h", stack.pgrun, "-p", stack.ports["postgres"], "-U", "postgres", "-d", "postgres"]
    cmd = as_postgres(pg_bin() / "psql", *where, "-v", "ON_ERROR_STOP=1", "-qtA", "-f", "-")
    return run(cmd, stdin_text=sql, cwd=stack.dir).strip()  # SQL on stdin: not visible in ps


def setup_pg_database(stack, password):
    """Idempotent: login role mail with the stack password, database mail owned by it."""
    psql(
        stack,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mail')"
        f" THEN CREATE ROLE mail; END IF; END $$;\nALTER ROLE mail LOGIN PASSWORD '{password}';",
    )
    if not psql(stack, "SELECT 1 FROM pg_database WHERE datname = 'mail';"):
        psql(stack, "CREATE DATABASE mail OWNER mail;")


def stop_postgres(stack):
    if pg_running(stack):
        cmd = as_postgres(pg_bin() / "pg_ctl", "-D", stack.pgdata, "-m", "fast", "-w", "stop")
        run(cmd, cwd=stack.dir)
