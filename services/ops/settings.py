"""What every command of mail-ops starts from: its settings, who runs it, and the connections
to PostgreSQL and RabbitMQ it opens for one command."""

import contextlib
import getpass
from collections.abc import AsyncIterator

import asyncpg
from aio_pika.abc import AbstractConnection
from pydantic import Field, SecretStr

from shared.broker import Nodes
from shared.crypto import parse_keys
from shared.db import create_pool
from shared.settings import ServiceSettings


class OpsSettings(ServiceSettings):
    """Only names the services already use, so the README's settings table covers them."""

    fernet_keys: SecretStr = Field(
        SecretStr(""), description="Comma-separated Fernet keys, newest first (rotate-keys)."
    )

    def encryption_keys(self) -> list[str]:
        return parse_keys(self.fernet_keys.get_secret_value())


def login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


@contextlib.asynccontextmanager
async def open_pool(settings: OpsSettings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.postgres_dsn.get_secret_value(), max_size=2,
                             pooling=settings.db_pooling)
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def open_broker(settings: OpsSettings) -> AsyncIterator[AbstractConnection]:
    # Not robust: a one-shot tool reports a lost connection rather than carrying on with a
    # new channel that holds none of the messages it read.
    connection = await Nodes(settings.amqp_url.get_secret_value()).connect(
        timeout=15, client_properties={"connection_name": "ops-cli"})
    try:
        yield connection
    finally:
        await connection.close()
