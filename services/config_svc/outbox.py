"""Publishes the account events of the outbox table to `mail.events` after their commit.

An event row is deleted in the same transaction that published it with a confirm, so a crash
before the confirm publishes it again on restart (at least once, with the same event_id for
consumers that deduplicate), and a crash before the commit loses nothing.
"""

import asyncio
import contextlib
from typing import Any

import asyncpg
import orjson
import structlog
from aio_pika.abc import AbstractChannel

from services.config_svc import repository
from shared.topology import Topology, make_message, publish_many

log = structlog.get_logger(__name__)


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, channel: AbstractChannel, topology: Topology,
                 poll_s: float, batch: int = 200) -> None:
        self._pool = pool
        self._channel = channel
        self._topology = topology
        self._poll_s = poll_s
        self._batch = batch
        self._wake = asyncio.Event()
        self._stopping = False
        self.healthy = False

    def wake(self) -> None:
        """Called after a commit that wrote events, so they go out at once, not at next poll."""
        self._wake.set()

    async def drain(self) -> int:
        """Publishes everything waiting; returns how many events went out."""
        exchange = await self._channel.get_exchange(self._topology.events_exchange, ensure=False)
        published = 0
        while True:
            async with self._pool.acquire() as db, db.transaction():
                rows = await repository.take_events(db, self._batch)
                if not rows:
                    return published
                # Not mandatory: an event nobody listens to yet is not an error.
                await publish_many(exchange, map(self._item, rows), mandatory=False)
                await repository.forget_events(db, [row["id"] for row in rows])
            published += len(rows)

    def _item(self, row: Any) -> tuple[str, Any]:
        body = row["body"]
        headers = {"account_id": body["account_id"]} if body.get("account_id") else {}
        message = make_message(
            orjson.dumps(body), message_id=row["event_id"], headers=headers,
            type_=row["routing_key"],
        )
        return row["routing_key"], message

    def stop(self) -> None:
        """Ends `run` after the batch in hand. A flag, not a cancellation: on Python 3.11,
        wait_for (which aio-pika's publish uses) can swallow a cancel that races its result."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before draining: a commit during the drain wakes us again
            try:
                count = await self.drain()
                self.healthy = True
                if count:
                    log.debug("account events published", count=count)
            except Exception:
                self.healthy = False
                log.exception("publishing account events failed; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
