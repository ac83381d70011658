"""PgBouncer: only installed by the stack; tests/support/pgbouncer.py runs one of its own per
test module, in front of the stack's PostgreSQL."""

from pathlib import Path

PGBOUNCER = "/usr/sbin/pgbouncer"


def pgbouncer_installed():
    return Path(PGBOUNCER).exists()
