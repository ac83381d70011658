"""PostgreSQL: a pool helper and a small migrations runner.

Migrations are numbered `.sql` files (`0001_accounts.sql`, ...) in a service's
`migrations/` folder. Each runs in its own transaction and is recorded in
`schema_migrations`; a transaction-level advisory lock makes two replicas starting at once
take turns, so that it holds behind a pooler in transaction mode too.

`pooling` says what is between the services and PostgreSQL: `session` (PostgreSQL itself, or
a pooler in session mode) or `transaction` (PgBouncer in transaction mode: a server
connection per transaction, so no prepared statement outlives its transaction and no
session state may be relied on; none is, in any mode).
"""

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg
import orjson
import structlog

log = structlog.get_logger(__name__)

Pooling = Literal["session", "transaction"]

_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


class SchemaTooOld(RuntimeError):
    """The database lacks migrations this code needs; run them first."""


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "json", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
        schema="pg_catalog",
    )
    # Binary, so that COPY (which speaks only binary) can write jsonb too: a version byte,
    # then the JSON text.
    await connection.set_type_codec(
        "jsonb", encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda data: orjson.loads(data[1:]), schema="pg_catalog", format="binary",
    )


def _options(pooling: Pooling) -> dict[str, Any]:
    # Behind a pooler in transaction mode a named prepared statement would be looked for on
    # another server connection: asyncpg then uses unnamed ones, parsed again each time.
    return {"statement_cache_size": 0} if pooling == "transaction" else {}


async def connect(dsn: str, pooling: Pooling = "session") -> asyncpg.Connection:
    """A connection outside any pool (a lock holder's, the migrations')."""
    return await asyncpg.connect(dsn, command_timeout=30, **_options(pooling))


async def _keep_session(connection: asyncpg.Connection) -> None:
    """No reset query on release (asyncpg still rolls back an open transaction)."""


async def create_pool(dsn: str, max_size: int = 10, min_size: int = 1,
                      pooling: Pooling = "session", stateless: bool = False) -> asyncpg.Pool:
    """`stateless`: for code that leaves no session state behind (no LISTEN, SET or
    cursors): no reset query on each release, a round trip as long as the query itself
    (docs/benchmarks.md). Behind a transaction pooler there is none either: asyncpg's reset
    query (RESET ALL, pg_advisory_unlock_all(), ...) would run on whichever server
    connection it is given, another client's."""
    reset = _keep_session if stateless or pooling == "transaction" else None
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=30,
        reset=reset, **_options(pooling),
    )


async def create_stateless_pool(dsn: str, max_size: int = 10, min_size: int = 1,
                                pooling: Pooling = "session") -> asyncpg.Pool:
    return await create_pool(dsn, max_size, min_size, pooling, stateless=True)


def find_migrations(folder: Path) -> list[Migration]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise ValueError(f"migration file name not of the form 0001_name.sql: {path.name}")
        found.append(Migration(int(match["version"]), match["name"], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a number in {folder}")
    return found


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    service    text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, version)
)
"""


# One lock for every service, not one each: CREATE TABLE IF NOT EXISTS itself races.
_LOCK_ID = zlib.crc32(b"mail-delivery:migrations")


async def migrate(connection: asyncpg.Connection, service: str, folder: Path) -> list[int]:
    """Apply the migrations of `folder` not yet applied; returns the versions applied.

    Each in a transaction of its own that first takes the lock, then looks again whether
    it is applied: a replica that waited finds the other one's work done."""
    applied_now: list[int] = []
    for migration in find_migrations(folder):
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            await connection.execute(_CREATE_TABLE)
            if await connection.fetchval(
                    "SELECT true FROM schema_migrations WHERE service = $1 AND version = $2",
                    service, migration.version):
                continue
            await connection.execute(migration.path.read_text(encoding="utf-8"))
            await connection.execute(
                "INSERT INTO schema_migrations (service, version, name) VALUES ($1, $2, $3)",
                service, migration.version, migration.name,
            )
        log.info("migration applied", service=service, version=migration.version,
                 migration=migration.name)
        applied_now.append(migration.version)
    return applied_now


async def migrate_service(dsn: str, service: str, folder: Path,
                          pooling: Pooling = "session") -> list[int]:
    """`python -m services.<name> migrate`: one connection, the service's migrations."""
    connection = await connect(dsn, pooling)
    try:
        applied = await migrate(connection, service, folder)
    finally:
        await connection.close()
    log.info("migrations done", service=service, applied=applied)
    return applied


async def require_schema(connection: asyncpg.Connection, service: str, folder: Path) -> None:
    """Refuse to run on a schema older than this code needs, with a clear message."""
    needed = max((m.version for m in find_migrations(folder)), default=0)
    try:
        have = await connection.fetchval(
            "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE service = $1", service
        )
    except asyncpg.UndefinedTableError:
        have = 0
    if have < needed:
        raise SchemaTooOld(
            f"the {service} schema is at version {have}, this code needs {needed}: "
            f"run the migrations first (python -m services.{service} migrate)"
        )
