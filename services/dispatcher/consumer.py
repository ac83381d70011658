"""The request queue's consumer: the edge between AMQP messages and `Intake` (routing key
`delivery.request`) or `CancelIntake` (`delivery.cancel`)."""

import asyncio

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from services.dispatcher.cancel import CANCEL_KEY, CancelIntake
from services.dispatcher.intake import Intake

log = structlog.get_logger(__name__)


class RequestConsumer:
    def __init__(self, queue: AbstractQueue, intake: Intake, cancels: CancelIntake) -> None:
        self._queue = queue
        self._intake = intake
        self._cancels = cancels
        self._tag: str | None = None
        self._in_hand: set[asyncio.Task] = set()

    @property
    def consuming(self) -> bool:
        return self._tag is not None

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_hand.add(task)
        structlog.contextvars.clear_contextvars()
        try:
            handler = self._cancels if message.routing_key == CANCEL_KEY else self._intake
            outcome = await handler.handle(message.body, message.message_id)
        except Exception:
            # The database or the broker failed, not the request: try it again later.
            # Each try counts toward the queue's delivery limit, after which it goes to
            # mail.dead; the pause keeps an outage from burning those tries at once.
            attempt = int((message.headers or {}).get("x-delivery-count") or 0)
            log.exception("delivery request failed; it will be tried again", attempt=attempt)
            await asyncio.sleep(min(30.0, 2.0 * (attempt + 1)))
            await message.nack(requeue=True)
        else:
            await message.ack()
            log.debug("delivery request handled", outcome=outcome)
        finally:
            self._in_hand.discard(task)

    async def stop(self, deadline_s: float) -> None:
        """Takes no more requests and waits for those in hand, up to the deadline."""
        if self._tag is not None:
            await self._queue.cancel(self._tag)
            self._tag = None
        if self._in_hand:
            await asyncio.wait(set(self._in_hand), timeout=deadline_s)
