"""`python -m services.sender [serve|migrate]`."""

import argparse
import asyncio

import structlog

from services.sender.main import MIGRATIONS, SERVICE, serve, setup
from services.sender.settings import SenderSettings
from shared.db import create_pool, migrate

log = structlog.get_logger(__name__)


async def run_migrations(settings: SenderSettings) -> None:
    pool = await create_pool(settings.postgres_dsn.get_secret_value(), 1)
    try:
        async with pool.acquire() as db:
            applied = await migrate(db, SERVICE, MIGRATIONS)
        log.info("migrations done", service=SERVICE, applied=applied)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.sender", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="send the jobs of every account")
    commands.add_parser("migrate", help="apply the database migrations")
    args = parser.parse_args(argv)
    settings = SenderSettings()
    setup(settings)
    asyncio.run(run_migrations(settings) if args.command == "migrate" else serve(settings))
