"""`python -m services.dispatcher [serve|migrate]`."""

import argparse
import asyncio

from services.dispatcher.main import MIGRATIONS, SERVICE, serve
from services.dispatcher.settings import DispatcherSettings
from shared.db import migrate_service
from shared.runtime import start_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.dispatcher", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="consume delivery requests and serve their status")
    commands.add_parser("migrate", help="apply the database migrations")
    args = parser.parse_args(argv)
    settings = DispatcherSettings()
    start_logging(settings)
    if args.command == "migrate":
        dsn = settings.postgres_dsn.get_secret_value()
        asyncio.run(migrate_service(dsn, SERVICE, MIGRATIONS))
    else:
        asyncio.run(serve(settings))
