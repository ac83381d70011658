"""Connections to RabbitMQ: one address (a Kubernetes Service in front of the cluster) or
several, the nodes of a cluster (`MAIL_AMQP_URL` comma-separated).

With several, a connection is made to the first node that answers, and when it is lost the
next attempt goes to the next node in turn, so that a dead node is not tried again and again
while the others are up. aio-pika's robust connection takes one URL: `ClusterConnection`
changes it before each attempt after the first.
"""

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
import structlog
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

log = structlog.get_logger(__name__)
C = TypeVar("C")


def broker_urls(setting: str) -> list[str]:
    """The URLs of `MAIL_AMQP_URL`: one, or several separated by commas."""
    urls = [part.strip() for part in setting.split(",") if part.strip()]
    if not urls:
        raise ValueError("MAIL_AMQP_URL names no broker")
    return urls


def broker_user(setting: str) -> str:
    """The user the service logs in as (every URL names the same one)."""
    return URL(broker_urls(setting)[0]).user or "guest"


def _shown(url: str) -> str:
    return str(URL(url).with_password(None).with_user(None))


async def _first_that_answers(urls: list[str], start: int,
                              connect: Callable[[int], Awaitable[C]]) -> tuple[C, int]:
    """`connect(i)` for each node in turn from `start`: the first connection made and its
    node's index, or the last node's error."""
    error: Exception | None = None
    for step in range(len(urls)):
        at = (start + step) % len(urls)
        try:
            return await connect(at), at
        except Exception as exc:  # the next node, then the last error
            if len(urls) > 1:
                log.warning("broker node does not answer", node=_shown(urls[at]),
                            error=str(exc))
            error = exc
    assert error is not None
    raise error


class ClusterConnection(RobustConnection):
    """A robust connection that reconnects to the next of its URLs."""

    def __init__(self, urls: list[str], first: int = 0, **kwargs: Any) -> None:
        super().__init__(URL(urls[first]), **kwargs)
        self._urls = [URL(u) for u in urls]
        self._at = first
        self._attempts = 0

    # RobustConnection's reconnect loop calls this private method before each transport
    # attempt (aio-pika 10.2); tests/integration/test_cluster.py fails if that changes.
    async def _RobustConnection__connect_transport(self) -> None:
        if self._attempts:
            self._at = (self._at + 1) % len(self._urls)
            self.url = self._urls[self._at]
            log.info("connecting to the next broker node", node=_shown(str(self.url)))
        self._attempts += 1
        await super()._RobustConnection__connect_transport()


async def connect_robust(setting: str, timeout: float | None = None,
                         **kwargs: Any) -> AbstractRobustConnection:
    """A robust connection to the first node that answers; it reconnects to the next ones.
    `kwargs`: those of aio-pika's Connection (client_properties, ...)."""
    urls = broker_urls(setting)
    if len(urls) == 1:
        return await aio_pika.connect_robust(urls[0], timeout=timeout, **kwargs)

    async def connect(first: int) -> ClusterConnection:
        connection = ClusterConnection(urls, first, **kwargs)
        try:
            await connection.connect(timeout=timeout)
        except Exception:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return connection

    connection, _ = await _first_that_answers(urls, 0, connect)
    return connection


class Nodes:
    """For a plain connection that its owner makes again when lost: each connect starts with
    the node after the one used last."""

    def __init__(self, setting: str) -> None:
        self._urls = broker_urls(setting)
        self._next = 0

    async def connect(self, **kwargs: Any) -> AbstractConnection:
        connection, at = await _first_that_answers(
            self._urls, self._next, lambda i: aio_pika.connect(self._urls[i], **kwargs))
        self._next = at + 1
        return connection
