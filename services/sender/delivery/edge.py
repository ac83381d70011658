"""The send path's AMQP edge, the only module of it that imports aio-pika: a message in is
decoded once into an `Arrival` for the handler; the handler's `Disposition` is carried out
here (acked, given back, put on a queue, a retry queue or the dead letters)."""

import asyncio
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError, DeliveryError
from pydantic import ValidationError

from services.sender.delivery.context import Arrival
from services.sender.delivery.disposition import (
    Disposition,
    Requeue,
    ToDead,
    ToQueue,
    ToRetry,
)
from shared.messages import SendJob
from shared.topology import Topology, make_message, publish

log = structlog.get_logger(__name__)


def arrival(body: bytes, urgent: bool, home: Any | None) -> Arrival:
    try:
        return Arrival(SendJob.model_validate_json(body), urgent=urgent, home=home)
    except ValidationError as error:
        return Arrival(None, invalid=str(error)[:500], urgent=urgent, home=home)


class InHand:
    """One message in hand, as the handler's `Carrier`: what it decides is done here."""

    def __init__(self, message: AbstractIncomingMessage, arrived: Arrival,
                 topology: Topology, channel: AbstractChannel, own_account: str) -> None:
        self._message = message
        self._topology = topology
        self._channel = channel  # confirmed: a job put back is on its queue before the ack
        self._urgent = arrived.urgent
        self._queue_account = arrived.queue_account(own_account)

    def alive(self) -> bool:
        """The message's channel is open: it can still be acked. Once it closed, the broker
        gives the message again (its outcome, if any, is recorded)."""
        try:
            return not self._message.channel.is_closed
        except ChannelInvalidStateError:
            return False

    async def carry_out(self, disposition: Disposition) -> None:
        if isinstance(disposition, Requeue):
            await self._message.nack(requeue=True)
            return
        if isinstance(disposition, ToQueue):
            try:
                await self._republish(self._topology.send_exchange,
                                      self._key(disposition.account_id))
            except DeliveryError:
                if disposition.account_id == self._queue_account:
                    raise
                # Its own account has no queue any more (deleted): nothing may send it.
                await self.carry_out(ToDead(
                    "wrong_account", f"a job of account {disposition.account_id} found on the "
                    f"queue of {self._queue_account}, and its own queue is gone"))
                return
        elif isinstance(disposition, ToRetry):
            await self._republish(self._topology.retry_name(disposition.delay_s),
                                  self._key(self._queue_account),
                                  {"x-retry-delay-s": disposition.delay_s})
        elif isinstance(disposition, ToDead):
            await self._to_dead(disposition)
        await self._message.ack()

    async def _to_dead(self, dead: ToDead) -> None:
        topology = self._topology
        original = (topology.urgent_queue if self._urgent
                    else topology.account_queue)(self._queue_account)
        await self._republish(topology.dead_exchange, self._queue_account, {
            "x-reason": dead.reason, "x-detail": dead.detail, "x-original-queue": original})
        log.warning("job moved to the dead-letter queue", reason=dead.reason,
                    detail=dead.detail)

    def _key(self, account_id: str) -> str:
        """The routing key back to the account's queue of the kind the job came from."""
        return self._topology.send_key(account_id, self._urgent)

    async def _republish(self, exchange_name: str, routing_key: str,
                         headers: dict | None = None) -> None:
        message = self._message
        # Declared at start: no round trip to the broker for it.
        exchange = await self._channel.get_exchange(exchange_name, ensure=False)
        await publish(exchange, routing_key, make_message(
            message.body, message_id=message.message_id or "",
            headers={**(message.headers or {}), **(headers or {})}, type_=message.type))


class Edge:
    """An account worker's consumers: each message is handled in a task of its own."""

    def __init__(self, handler: Any, topology: Topology, channel: AbstractChannel,
                 account_id: str) -> None:
        self._handler = handler
        self._topology = topology
        self._channel = channel
        self._account_id = account_id
        self._tasks: set[asyncio.Task] = set()
        # A job came since the consumer was made: it is the active consumer of its queues
        # (single active consumer gives a standby none).
        self.delivered = False

    async def on_message(self, message: AbstractIncomingMessage, urgent: bool = False) -> None:
        self.delivered = True
        await self._shielded(message, None, urgent)

    def standing_in(self, home: Any) -> Any:
        """The consumer of a paused account's queues while this account stands in for it."""
        async def on_message(message: AbstractIncomingMessage, urgent: bool) -> None:
            await self._shielded(message, home, urgent)
        return on_message

    async def _shielded(self, message: AbstractIncomingMessage, home: Any | None,
                        urgent: bool) -> None:
        # The job runs in a task of its own: a channel that closes cancels its consumers'
        # callbacks, and a send cancelled between its 250 and its record would be sent again.
        task = asyncio.create_task(self._take(message, home, urgent))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def _take(self, message: AbstractIncomingMessage, home: Any | None,
                    urgent: bool) -> None:
        arrived = arrival(message.body, urgent, home)
        await self._handler.take(arrived, InHand(message, arrived, self._topology,
                                                 self._channel, self._account_id))
