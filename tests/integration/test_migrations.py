import asyncio
from pathlib import Path

import asyncpg
import pytest

from shared.db import Pooling, SchemaTooOld, connect, migrate, require_schema


def write_migrations(folder: Path, table: str) -> None:
    folder.mkdir()
    (folder / "0001_create.sql").write_text(
        f"CREATE TABLE {table} (id serial PRIMARY KEY, note text NOT NULL);"
    )
    # Not idempotent on purpose: running it twice would leave two rows.
    (folder / "0002_seed.sql").write_text(
        f"INSERT INTO {table} (note) VALUES ('seeded'); SELECT pg_sleep(0.2);"
    )


async def test_migrations_run_twice_are_a_no_op(
    pool: asyncpg.Pool, tmp_path: Path, unique: str
) -> None:
    folder = tmp_path / "migrations"
    write_migrations(folder, unique)
    async with pool.acquire() as connection:
        assert await migrate(connection, unique, folder) == [1, 2]
        assert await migrate(connection, unique, folder) == []
        assert await connection.fetchval(f"SELECT count(*) FROM {unique}") == 1
        await require_schema(connection, unique, folder)


async def test_two_concurrent_runners_do_not_collide(
    postgres_dsn: str, db_pooling: Pooling, tmp_path: Path, unique: str
) -> None:
    folder = tmp_path / "migrations"
    write_migrations(folder, unique)
    first = await connect(postgres_dsn, db_pooling)
    second = await connect(postgres_dsn, db_pooling)
    try:
        applied = await asyncio.gather(
            migrate(first, unique, folder), migrate(second, unique, folder)
        )
        assert sorted(applied) == [[], [1, 2]]
        assert await first.fetchval(f"SELECT count(*) FROM {unique}") == 1
        versions = await first.fetch(
            "SELECT version FROM schema_migrations WHERE service = $1 ORDER BY version", unique
        )
        assert [row["version"] for row in versions] == [1, 2]
    finally:
        await first.close()
        await second.close()


async def test_a_failing_migration_leaves_nothing_half_done(
    pool: asyncpg.Pool, tmp_path: Path, unique: str
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_broken.sql").write_text(
        f"CREATE TABLE {unique} (id int); SELECT no_such_function();"
    )
    async with pool.acquire() as connection:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrate(connection, unique, folder)
        assert await connection.fetchval("SELECT to_regclass($1)", unique) is None
        with pytest.raises(SchemaTooOld, match="needs 1"):
            await require_schema(connection, unique, folder)
