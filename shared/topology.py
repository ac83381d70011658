"""The exchanges and queues of the contract, declared idempotently, and publishing helpers.

Names default to CONTRACT.md (`mail.requests`, `mail.send.<account_id>`, ...); a deployment
may change the common prefix. Declaring the same thing twice is a no-op in RabbitMQ as long
as the arguments are the same, so every service declares what it uses at start.
"""

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
    ExchangeType,
)
from pydantic import BaseModel

from shared.messages import Event

JSON = "application/json"
log = structlog.get_logger(__name__)


def delay_label(seconds: int) -> str:
    """30 -> '30s', 120 -> '2m', 3600 -> '1h': the suffix of a retry queue's name."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Topology:
    prefix: str = "mail"
    retry_delays_s: tuple[int, ...] = (30, 120, 600, 3600)
    # A request that crashed its consumer this often goes to the dead-letter queue.
    request_delivery_limit: int = 5
    # Generous: pausing an account returns its message in hand, which counts too.
    send_delivery_limit: int = 50

    @property
    def requests_exchange(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def send_exchange(self) -> str:
        return f"{self.prefix}.send"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def requests_queue(self) -> str:
        return f"{self.prefix}.dispatcher.requests"

    def account_queue(self, account_id: str) -> str:
        return f"{self.prefix}.send.{account_id}"

    def urgent_queue(self, account_id: str) -> str:
        """The account's second queue, for `priority: high`: its worker looks there first
        (quorum queues on RabbitMQ 3.10 have no priorities)."""
        return f"{self.prefix}.send.{account_id}.urgent"

    @staticmethod
    def send_key(account_id: str, urgent: bool = False) -> str:
        """The routing key of an account's jobs on `mail.send` and `mail.retry.back`."""
        return f"{account_id}.urgent" if urgent else account_id

    def send_queues(self, account_id: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """(queue, routing key) of the account's normal and urgent queues."""
        return ((self.account_queue(account_id), self.send_key(account_id)),
                (self.urgent_queue(account_id), self.send_key(account_id, urgent=True)))

    def retry_name(self, delay_s: int) -> str:
        """Both the exchange and the queue of one retry tier."""
        return f"{self.prefix}.retry.{delay_label(delay_s)}"

    @property
    def retry_back_exchange(self) -> str:
        """Where a retry goes back to its account's queue when its delay ends: each account
        queue is bound to it too, and what it cannot route (the account's queue is gone) goes
        to `mail.dead` (its alternate exchange) instead of waiting in the retry queue."""
        return f"{self.prefix}.retry.back"

    def retry_queue_arguments(self, delay_s: int) -> dict[str, Any]:
        return {
            # Quorum: replicated, and its dead-lettering back to the account can be
            # at-least-once (a classic queue's is at most once: a job could vanish).
            "x-queue-type": "quorum",
            "x-message-ttl": delay_s * 1000,
            "x-dead-letter-exchange": self.retry_back_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # what at-least-once dead-lettering needs
        }

    def account_queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            # Quorum, not classic: classic single active consumer crashes the queue on
            # RabbitMQ 3.10.8 (rabbitmq-server#5460).
            "x-single-active-consumer": True,
            "x-dead-letter-exchange": self.dead_exchange,
            "x-delivery-limit": self.send_delivery_limit,
        }

    async def declare(self, channel: AbstractChannel) -> None:
        """Exchanges and fixed queues; safe to run from every replica at every start."""
        await channel.declare_exchange(self.requests_exchange, ExchangeType.TOPIC, durable=True)
        await channel.declare_exchange(self.events_exchange, ExchangeType.TOPIC, durable=True)
        send = await channel.declare_exchange(self.send_exchange, ExchangeType.DIRECT, durable=True)
        dead = await channel.declare_exchange(self.dead_exchange, ExchangeType.FANOUT, durable=True)

        dead_queue = await channel.declare_queue(
            self.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_queue.bind(dead, routing_key="")

        requests = await channel.declare_queue(
            self.requests_queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": self.dead_exchange,
                "x-delivery-limit": self.request_delivery_limit,
            },
        )
        for key in ("delivery.request", "delivery.cancel"):
            await requests.bind(self.requests_exchange, routing_key=key)

        await channel.declare_exchange(
            self.retry_back_exchange, ExchangeType.DIRECT, durable=True,
            arguments={"alternate-exchange": dead.name})
        for delay in self.retry_delays_s:
            name = self.retry_name(delay)
            exchange = await channel.declare_exchange(name, ExchangeType.FANOUT, durable=True)
            # Dead-lettering keeps the routing key (the account id), so an expired message
            # lands back in its account's queue through `mail.retry.back`.
            await _replace_classic_retry_queue(channel, name, self.retry_queue_arguments(delay),
                                               send.name, dead.name)
            queue = await channel.declare_queue(
                name, durable=True, arguments=self.retry_queue_arguments(delay))
            await queue.bind(exchange, routing_key="")

    async def account_queue_depth(self, channel: AbstractChannel, account_id: str) -> int:
        """Messages ready in the account's queue, asked of the broker now (declaring and
        binding the queue if missing). A robust channel's own declare_queue returns its cached
        first answer."""
        underlay = await channel.get_underlay_channel()
        waiting = 0
        for name, key in self.send_queues(account_id):
            answer = await underlay.queue_declare(
                name, durable=True, arguments=self.account_queue_arguments())
            for exchange in (self.send_exchange, self.retry_back_exchange):
                await underlay.queue_bind(name, exchange, routing_key=key)
            waiting += answer.message_count or 0
        return waiting

    async def queue_depths(self, channel: AbstractChannel,
                           account_ids: Iterable[str]) -> dict[str, int]:
        """Messages ready in each account's two queues, for a list on a screen: one declare a
        queue (with the same arguments, so never refused), no bindings."""
        underlay = await channel.get_underlay_channel()
        depths: dict[str, int] = {}
        for account_id in account_ids:
            depths[account_id] = 0
            for name, _key in self.send_queues(account_id):
                answer = await underlay.queue_declare(
                    name, durable=True, arguments=self.account_queue_arguments())
                depths[account_id] += answer.message_count or 0
        return depths

    async def declare_account_queue(
        self, channel: AbstractChannel, account_id: str
    ) -> AbstractQueue:
        """The account's queue and its urgent queue; returns the first."""
        return (await self.declare_account_queues(channel, account_id))[0]

    async def declare_account_queues(
        self, channel: AbstractChannel, account_id: str
    ) -> tuple[AbstractQueue, AbstractQueue]:
        queues = []
        for name, key in self.send_queues(account_id):
            queue = await channel.declare_queue(
                name, durable=True, arguments=self.account_queue_arguments())
            await queue.bind(self.send_exchange, routing_key=key)
            await queue.bind(self.retry_back_exchange, routing_key=key)
            queues.append(queue)
        return queues[0], queues[1]


async def _replace_classic_retry_queue(channel: AbstractChannel, name: str,
                                       arguments: dict[str, Any], send_exchange: str,
                                       dead_exchange: str) -> None:
    """A deployment of an earlier version has its retry queues as classic queues, which a
    declare as quorum refuses (PRECONDITION_FAILED). Their jobs go back to their accounts'
    queues now (retried early, never lost: each is acked after the broker confirmed its
    copy), then the old queue is deleted, so that the caller declares it anew."""
    connection = (await channel.get_underlay_channel()).connection
    probe = await connection.channel()
    try:
        await probe.queue_declare(name, durable=True, arguments=arguments)
        return  # already what it should be, or new
    except aiormq.exceptions.ChannelPreconditionFailed:
        pass
    finally:
        if not probe.is_closed:
            await probe.close()
    mover = await connection.channel(publisher_confirms=True, on_return_raises=True)
    moved = 0
    try:
        while True:
            message = await mover.basic_get(name, no_ack=False)
            if not isinstance(message.delivery, aiormq.spec.Basic.GetOk):
                break
            try:
                await mover.basic_publish(message.body, exchange=send_exchange,
                                          routing_key=message.routing_key or "",
                                          properties=message.header.properties, mandatory=True)
            except aiormq.exceptions.PublishError:  # its account's queue is gone
                await mover.basic_publish(message.body, exchange=dead_exchange,
                                          routing_key=message.routing_key or "",
                                          properties=message.header.properties)
            await mover.basic_ack(message.delivery.delivery_tag)
            moved += 1
        await mover.queue_delete(name, if_unused=False, if_empty=False)
    finally:
        if not mover.is_closed:
            await mover.close()
    log.warning("classic retry queue replaced by a quorum queue", queue=name,
                jobs_sent_back_early=moved)


async def open_confirmed_channel(connection: AbstractConnection) -> AbstractChannel:
    """A channel whose publishes wait for the broker's confirm and raise when unroutable.

    aio-pika's default returns an unroutable message silently; a lost mail must be an error.
    """
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


async def open_transaction_channel(connection: AbstractConnection) -> AbstractChannel:
    """A channel for publishing in AMQP transactions (tx.select, tx.commit): no publisher
    confirms, which the broker does not allow beside transactions on one channel."""
    return await connection.channel(publisher_confirms=False)


def make_message(
    body: bytes | BaseModel,
    *,
    message_id: str,
    headers: Mapping[str, Any] | None = None,
    type_: str | None = None,
) -> aio_pika.Message:
    if isinstance(body, BaseModel):
        body = body.model_dump_json().encode()
    return aio_pika.Message(
        body,
        content_type=JSON,
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        type=type_,
        headers=dict(headers or {}),
    )


async def publish(
    exchange: AbstractExchange, routing_key: str, message: aio_pika.Message, timeout: float = 30
) -> None:
    """Publish and wait for the broker's confirm; unroutable or nacked raises."""
    await exchange.publish(message, routing_key=routing_key, mandatory=True, timeout=timeout)


async def publish_many(
    exchange: AbstractExchange,
    items: Iterable[tuple[str, aio_pika.Message]],
    window: int = 1000,
    timeout: float = 60,
    mandatory: bool = True,
) -> int:
    """Publish with up to `window` confirms in flight; returns how many were confirmed.

    Awaiting each confirm in turn is about five times slower than keeping many in flight.
    The first failure raises after the window it belongs to has settled.
    """
    confirmed = 0
    pending: list[asyncio.Future] = []

    async def settle() -> None:
        nonlocal confirmed
        results = await asyncio.gather(*pending, return_exceptions=True)
        pending.clear()
        for result in results:
            if isinstance(result, BaseException):
                raise result
            confirmed += 1

    for routing_key, message in items:
        pending.append(
            asyncio.ensure_future(
                exchange.publish(
                    message, routing_key=routing_key, mandatory=mandatory, timeout=timeout
                )
            )
        )
        if len(pending) >= window:
            await settle()
    if pending:
        await settle()
    return confirmed


def event_message(event: Event) -> aio_pika.Message:
    headers = {
        key: value
        for key in ("delivery_id", "account_id")
        if (value := getattr(event, key, None)) is not None
    }
    return make_message(event, message_id=event.event_id, headers=headers, type_=event.type)  # type: ignore[attr-defined]


class EventPublisher:
    """Publishes contract events to `mail.events` with the event type as routing key."""

    def __init__(self, channel: AbstractChannel, topology: Topology) -> None:
        self._channel = channel
        self._topology = topology
        self._exchange: AbstractExchange | None = None

    async def publish(self, event: Event) -> None:
        if self._exchange is None:
            self._exchange = await self._channel.get_exchange(
                self._topology.events_exchange, ensure=False
            )
        # Nobody may be bound yet: an event without a listener is not an error, so not
        # mandatory here (unlike jobs and requests, where unroutable means lost).
        await self._exchange.publish(
            event_message(event), routing_key=event.type, mandatory=False, timeout=30  # type: ignore[attr-defined]
        )
