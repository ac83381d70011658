"""Transactional outbox: events written in the transaction of the change they describe, then
published to `mail.events` by a relay.

A batch of rows is deleted in the database transaction that publishes it in one AMQP
transaction, committed at the broker before the database commits: a crash before the broker's
commit-ok publishes it again on restart (at least once, with the same event_id for consumers
that deduplicate), and a crash before the database's commit loses nothing. Replicas share a
table: rows are taken with SKIP LOCKED, so two relays never publish the same batch.

An AMQP transaction rather than publisher confirms: its commit-ok, like a confirm, says the
broker has every message of the batch (persisted where the queue is durable), and it costs one
round trip a batch where confirms cost a future, a task and a reply per event (a quarter of the
sender's CPU went to publishing its events that way).
"""

import asyncio
import contextlib
from operator import itemgetter
from typing import Any

import asyncpg
import orjson
import structlog
from aio_pika.abc import AbstractChannel
from prometheus_client import Counter, Gauge
from pydantic import TypeAdapter, ValidationError

from shared.messages import EVENT_TYPES
from shared.topology import Topology, make_message

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
PUBLISH_TIMEOUT_S = 60  # a batch's publishing and commit at the broker
_BY_TYPE: dict[str, TypeAdapter[Any]] = {
    model.model_fields["type"].default: TypeAdapter(model) for model in EVENT_TYPES
}


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, channel: AbstractChannel, topology: Topology, *,
                 table: str, poll_s: float, linger_s: float = 0.0, batch: int = 500) -> None:
        if table not in TABLES:
            raise ValueError(f"not an outbox table: {table}")
        if getattr(channel, "publisher_confirms", False):
            raise ValueError("the relay publishes in AMQP transactions: a channel without "
                             "publisher confirms (open_transaction_channel)")
        # Taken and deleted in one statement; the rows stay locked, and come back, until the
        # transaction ends.
        self._take = (f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} ORDER BY id "
                      f"LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id, routing_key, event_id, "
                      f"body, extract(epoch FROM clock_timestamp() - created_at)::float8 AS age")
        self._table = table
        self._pool = pool
        self._channel = channel
        self._in_tx: object | None = None  # the channel put in transaction mode
        self._unfinished = False  # a batch published there and not committed (it failed)
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
        published = 0
        while True:
            async with self._pool.acquire() as db, db.transaction():
                rows = sorted(await db.fetch(self._take, self._batch), key=itemgetter("id"))
                if not rows:
                    LAST_DRAIN.labels(self._table).set_to_current_time()
                    return published
                LAG.labels(self._table).set(rows[0]["age"])
                items = [item for row in rows if (item := self._item(row)) is not None]
                await self._publish(items)
            published += len(items)
            PUBLISHED.labels(self._table).inc(len(items))

    async def _publish(self, items: list[tuple[str, Any]]) -> None:
        channel = await self._channel.get_underlay_channel()
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            if channel is not self._in_tx:  # a new channel after a reconnect, or the first
                await channel.tx_select()
                self._in_tx = channel
            elif self._unfinished:
                # A batch that failed half-way on this channel (a timeout while its frames
                # waited) left publishes in its transaction: committed with this batch, they
                # would go out twice, after newer events.
                await channel.tx_rollback()
            self._unfinished = True
            for routing_key, message in items:
                # Not mandatory: an event nobody listens to yet is not an error. Not waiting
                # for each frame's write: the commit is queued after them on the channel.
                await channel.basic_publish(
                    message.body, exchange=self._topology.events_exchange,
                    routing_key=routing_key, properties=message.properties, wait=False)
            await channel.tx_commit()
            self._unfinished = False

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
