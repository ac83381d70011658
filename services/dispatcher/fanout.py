"""One small job per recipient into the account's queue, each exactly once.

Jobs are published in windows, one AMQP transaction per window, and the window's recipient
rows are marked `queued` in a database transaction that commits right after the broker's
commit-ok. Publisher confirms cannot take back half a window when the dispatcher dies
mid-window: the broker keeps what it received, and the redelivered request would publish it
again. An uncommitted AMQP transaction is discarded when its channel dies, so after a crash
the redelivered request publishes exactly the windows that were not committed. The one
window left for a duplicate is between the broker's commit-ok and the database's commit.
"""

import asyncio
from collections.abc import Sequence
from typing import Any

import aio_pika
import asyncpg
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from services.dispatcher import repository
from shared.messages import SendJob
from shared.topology import Topology, make_message

log = structlog.get_logger(__name__)


class Unroutable(Exception):
    """The broker returned a job: the account's queue is gone."""


class FanOut:
    def __init__(self, connection: AbstractConnection, channel: AbstractChannel,
                 topology: Topology, window: int) -> None:
        self._connection = connection
        self._channel = channel
        self._topology = topology
        self._window = window
        self._lock = asyncio.Lock()  # one AMQP transaction on the channel at a time
        self._returned: set[str] = set()
        self._exchange: AbstractExchange | None = None
        channel.return_callbacks.add(self._on_return)

    @classmethod
    async def open(cls, connection: AbstractConnection, topology: Topology,
                   window: int) -> "FanOut":
        return cls(connection, await connection.channel(publisher_confirms=False), topology,
                   window)

    def _on_return(self, _channel: Any, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if message.message_id:
            self._returned.add(message.message_id)

    async def publish(self, db: asyncpg.Connection, delivery_id: str, account_id: str,
                      urgent: bool = False) -> int:
        """Publishes the jobs of every recipient not yet queued, to the account's urgent queue
        for `priority: high`; returns how many. The caller has checked that the queue is
        there (`require_queue`)."""
        if self._exchange is None:
            self._exchange = await self._channel.get_exchange(self._topology.send_exchange)
        await repository.release_scheduled(db, delivery_id)
        key = self._topology.send_key(account_id, urgent)
        published, after = 0, -1
        while window := await repository.not_queued(db, delivery_id, after, self._window):
            await self._publish_window(db, delivery_id, account_id, key, window)
            published += len(window)
            after = window[-1]["idx"]
        return published

    async def require_queue(self, account_id: str, urgent: bool = False) -> None:
        """config_svc declares an account's queues; the dispatcher only checks that the one
        it publishes to is there (a passive declare needs no permission: it may not read
        account queues)."""
        name = (self._topology.urgent_queue if urgent else self._topology.account_queue)(
            account_id)
        channel = await self._connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            raise Unroutable(f"no queue for account {account_id}") from None
        finally:
            if not channel.is_closed:
                await channel.close()

    async def _publish_window(self, db: asyncpg.Connection, delivery_id: str, account_id: str,
                              key: str, rows: Sequence[Any]) -> None:
        jobs = [
            SendJob(job_id=f"{delivery_id}:{row['idx']}", delivery_id=delivery_id,
                    account_id=account_id, index=row["idx"], email=row["email"],
                    name=row["name"], vars=row["vars"])
            for row in rows
        ]
        headers = {"delivery_id": delivery_id, "account_id": account_id}
        assert self._exchange is not None
        underlay = await self._channel.get_underlay_channel()
        async with self._lock, db.transaction():
            await repository.mark_queued(db, delivery_id, jobs[0].index, jobs[-1].index)
            transaction = self._channel.transaction()
            await transaction.select()
            for job in jobs:
                message = make_message(job, message_id=job.job_id, headers=headers,
                                       type_="mail.send")
                # Without waiting for each frame to be written: the commit below is queued
                # after them on the same channel, and its commit-ok says the broker has all.
                await underlay.basic_publish(
                    message.body, exchange=self._exchange.name, routing_key=key,
                    properties=message.properties, mandatory=True, wait=False)
            await transaction.commit()
            returned = self._returned & {job.job_id for job in jobs}
            self._returned -= returned
            if returned:  # the database transaction rolls back: these stay `new`
                raise Unroutable(f"{len(returned)} jobs came back: no queue for {account_id}")
