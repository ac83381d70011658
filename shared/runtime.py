"""Process life: the first SIGTERM or SIGINT asks for a graceful stop, the second exits now."""

import argparse
import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import asyncpg
import structlog
from aio_pika.abc import AbstractRobustConnection
from pydantic import SecretStr

from shared.broker import connect_robust
from shared.db import create_pool, migrate_service, require_schema
from shared.logging import configure_logging, register_secret
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)
S = TypeVar("S", bound=ServiceSettings)


def start_logging(settings: ServiceSettings) -> None:
    """Logging as the settings say, with every secret setting scrubbed from every line."""
    configure_logging(settings.log_level, settings.log_format, once=True)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            for part in value.get_secret_value().split(","):  # key lists too
                register_secret(part.strip())


def serve_or_migrate(argv: list[str] | None, *, service: str, serve_help: str,
                     settings_class: type[S], migrations: Path,
                     serve: Callable[[S], Awaitable[None]]) -> None:
    """`python -m services.<service> [serve|migrate]`: serve (the default) or apply the
    service's database migrations, with its settings and logging."""
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=f"Serve (the default), or apply the {service} database migrations.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help=serve_help)
    commands.add_parser("migrate", help="apply the database migrations")
    args = parser.parse_args(argv)
    settings = settings_class()
    start_logging(settings)
    if args.command == "migrate":
        dsn = settings.postgres_dsn.get_secret_value()
        asyncio.run(migrate_service(dsn, service, migrations, settings.db_pooling))
    else:
        asyncio.run(serve(settings))


@asynccontextmanager
async def connected(
    settings: ServiceSettings, connection_name: str, schemas: Mapping[str, Path],
    make_pool: Callable[..., Awaitable[asyncpg.Pool]] = create_pool,
) -> AsyncIterator[tuple[asyncpg.Pool, AbstractRobustConnection]]:
    """A service's database pool, once the schemas it needs ({service: migrations}) are
    migrated, and its broker connection; both closed on the way out."""
    pool = await make_pool(settings.postgres_dsn.get_secret_value(), settings.db_pool_max,
                           pooling=settings.db_pooling)
    try:
        async with pool.acquire() as db:
            for service, folder in schemas.items():
                await require_schema(db, service, folder)
        connection = await connect_robust(
            settings.amqp_url.get_secret_value(),
            client_properties={"connection_name": connection_name})
        async with connection:
            yield pool, connection
    finally:
        await pool.close()


def stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting at once", signal=signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop
