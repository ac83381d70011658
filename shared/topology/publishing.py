"""Publishing to the contract's exchanges: confirmed or transactional channels, persistent
JSON messages, and contract events."""

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from pydantic import BaseModel

from shared.messages import Event
from shared.topology.layout import Topology

JSON = "application/json"


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
