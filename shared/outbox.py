"""Transactional outbox: events written in the transaction of the change they describe, then
published to `mail.events` by a relay.

A batch of rows is deleted in the same transaction that published it with confirms, so a crash
before the confirms publishes it again on restart (at least once, with the same event_id for
consumers that deduplicate), and a crash before the commit loses nothing. Replicas share a
table: rows are taken with SKIP LOCKED, so two relays never publish the same batch.
"""

import asyncio
import contextlib
from typing import Any

import asyncpg
import orjson
import structlog
from aio_pika.abc import AbstractChannel
from prometheus_client import Counter, Gauge
from pydantic import TypeAdapter, ValidationError

from shared.messages import EVENT_TYPES
from shared.topology import Topology, make_message, publish_many

log = structlog.get_logger(__name__)

# Every outbox table has these columns: id bigserial, routing_key, event_id, body jsonb,
# created_at timestamptz.
TABLES = frozenset({"account_outbox", "sender_outbox"})
# How long the oldest event a relay just published had waited, and how many it published:
# an outbox that stops draining shows as a lag that grows while nothing is published.
LAG = Gauge("mail_outbox_lag_seconds",
            "How long the oldest event of the relay's last batch waited in the outbox.",
            ["table"])
PUBLISHED = Counter("mail_outbox_published_total", "Events the relay published.", ["table"])
LAST_DRAIN = Gauge("mail_outbox_last_drain_timestamp_seconds",
                   "When the relay last found its outbox empty.", ["table"])
_BY_TYPE: dict[str, TypeAdapter[Any]] = {
    model.model_fields["type"].default: TypeAdapter(model) for model in EVENT_TYPES
}


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, channel: AbstractChannel, topology: Topology, *,
                 table: str, poll_s: float, linger_s: float = 0.0, batch: int = 500) -> None:
        if table not in TABLES:
            raise ValueError(f"not an outbox table: {table}")
        self._take = (f"SELECT id, routing_key, event_id, body, "
                      f"extract(epoch FROM clock_timestamp() - created_at)::float8 AS age "
                      f"FROM {table} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED")
        self._table = table
        self._forget = f"DELETE FROM {table} WHERE id = ANY($1::bigint[])"
        self._pool = pool
        self._channel = channel
        self._topology = topology
        self._poll_s = poll_s
        self._linger_s = linger_s
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
                rows = await db.fetch(self._take, self._batch)
                if not rows:
                    LAST_DRAIN.labels(self._table).set_to_current_time()
                    return published
                LAG.labels(self._table).set(rows[0]["age"])
                items = [item for row in rows if (item := self._item(row)) is not None]
                # Not mandatory: an event nobody listens to yet is not an error.
                await publish_many(exchange, items, mandatory=False)
                await db.execute(self._forget, [row["id"] for row in rows])
            published += len(items)
            PUBLISHED.labels(self._table).inc(len(items))

    @staticmethod
    def _item(row: Any) -> tuple[str, Any] | None:
        body = row["body"]
        adapter = _BY_TYPE.get(row["routing_key"])
        try:
            if adapter is None:
                raise ValueError(f"unknown event type {row['routing_key']!r}")
            adapter.validate_python(body)
        except (ValueError, ValidationError) as error:
            # Written by our own code, so a bug: published it would break the contract, kept
            # it would stall every event behind it.
            log.error("outbox row is not a contract event; dropped", outbox_id=row["id"],
                      error=str(error)[:500])
            return None
        headers = {key: body[key] for key in ("delivery_id", "account_id") if body.get(key)}
        message = make_message(
            orjson.dumps(body), message_id=row["event_id"], headers=headers,
            type_=row["routing_key"],
        )
        return row["routing_key"], message

    def stop(self) -> None:
        """Ends `run` after one more drain (the events of the last commits). A flag, not a
        cancellation: on Python 3.11, wait_for (which aio-pika's publish uses) can swallow a
        cancel that races its result."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            last = self._stopping  # seen before the drain: a stop during it drains once more
            self._wake.clear()  # before draining: a commit during the drain wakes us again
            try:
                count = await self.drain()
                self.healthy = True
            except Exception:
                count = 0
                self.healthy = False
                log.exception("events left in the outbox; the next relay publishes them"
                              if last else "publishing events failed; retrying")
            if last:
                return
            if count:
                log.debug("events published", count=count)
                if self._linger_s:
                    # Busy: let the next events gather into one batch (one transaction,
                    # confirms together). After a quiet spell the first goes out at once.
                    await asyncio.sleep(self._linger_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
