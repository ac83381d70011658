"""The request queue's consumer: the edge between AMQP messages and `Intake` (routing key
`delivery.request`) or `CancelIntake` (`delivery.cancel`)."""

import asyncio

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from services.dispatcher.cancel import CANCEL_KEY, CancelIntake
from services.dispatcher.intake import Intake

log = structlog.get_logger(__name__)


class RequestConsumer:
    def __init__(self, queue: AbstractQueue, intake: Intake, cancels: CancelIntake,
                 bypass_users: frozenset[str] = frozenset()) -> None:
        self._queue = queue
        self._intake = intake
        self._cancels = cancels
        # Publishers whose `x-ignore-suppressions` header is honoured. RabbitMQ refuses a
        # `user_id` property that is not the publishing connection's own user, so it names
        # the publisher for sure.
        self._bypass_users = bypass_users
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
            if message.routing_key == CANCEL_KEY:
                outcome = await self._cancels.handle(message.body, message.message_id)
            else:
                outcome = await self._intake.handle(message.body, message.message_id,
                                                    self._ignores_suppressions(message))
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

    def _ignores_suppressions(self, message: AbstractIncomingMessage) -> bool:
        asked = str((message.headers or {}).get("x-ignore-suppressions", "")).lower()
        return asked in ("true", "1", "yes") and message.user_id in self._bypass_users

    async def stop(self, deadline_s: float) -> None:
        """Takes no more requests and waits for those in hand, up to the deadline."""
        if self._tag is not None:
            await self._queue.cancel(self._tag)
            self._tag = None
        if self._in_hand:
            await asyncio.wait(set(self._in_hand), timeout=deadline_s)
