"""Cancelling a delivery: by HTTP (`POST /v1/deliveries/{id}/cancel`) or by a
`delivery.cancel` message; every recipient not yet sent becomes `cancelled`.

The cancel commits first, then `delivery.cancelled` is published (and `delivery.completed`,
when the cancel settled the last recipients), then that is marked: a cancel repeated after a
crash in between publishes the same events again, with the same ids, and so does the
schedule's owner for any cancel left unannounced (`announce_pending`); once marked, a repeat
changes and publishes nothing, and answers the first one's counts. The sender reads each
recipient's row before its turn and again before DATA: a cancelled job is acked without a
transaction and without waiting for the account's pause.
"""

from dataclasses import dataclass

import asyncpg
import orjson
import structlog
from pydantic import ValidationError

from services.dispatcher import repository
from services.dispatcher.intake import DeadLetters
from services.dispatcher.rejection import INVALID_REQUEST, Rejection
from shared.messages import DeliveryCancel, DeliveryCancelled, DeliveryCompleted, stable_event_id
from shared.topology import EventPublisher

log = structlog.get_logger(__name__)

CANCEL_KEY = "delivery.cancel"
UNKNOWN_DELIVERY = "unknown_delivery"
NOT_PERMITTED = "not_permitted"


@dataclass(frozen=True)
class Cancelled:
    delivery_id: str
    sent: int  # recorded as sent when the cancel committed
    cancelled: int
    total: int
    requested_by: str | None

    def as_json(self) -> dict:
        return {"delivery_id": self.delivery_id, "state": "cancelled", "sent": self.sent,
                "cancelled": self.cancelled, "total": self.total}


class Canceller:
    def __init__(self, pool: asyncpg.Pool, events: EventPublisher) -> None:
        self._pool = pool
        self._events = events

    async def cancel(self, delivery_id: str, cancelled_by: str | None) -> Cancelled | None:
        """None: no such delivery. The caller has checked who may cancel it."""
        async with self._pool.acquire() as db:
            row = await repository.cancel(db, delivery_id, cancelled_by)
        if row is None:
            return None
        if row["cancel_announced_at"] is None:
            await self._events.publish(DeliveryCancelled(
                event_id=stable_event_id(delivery_id, "cancelled"), delivery_id=delivery_id,
                metadata=row["metadata"], sent=row["cancel_sent"],
                cancelled=row["cancel_count"], total=row["total"]))
            if row["completed_at"] is not None and row["completed_at"] == row["cancelled_at"]:
                # Completed by this cancel (one transaction, one now()); the same event id
                # as the sender's, which completes every other delivery.
                await self._events.publish(DeliveryCompleted(
                    event_id=stable_event_id(delivery_id, "completed"),
                    delivery_id=delivery_id, metadata=row["metadata"], sent=row["sent"],
                    failed=row["failed"] + row["unknown"], cancelled=row["cancelled"],
                    suppressed=row["suppressed"], total=row["total"]))
            await repository.mark_cancel_announced(self._pool, delivery_id)
            log.info("delivery cancelled", delivery_id=delivery_id,
                     cancelled=row["cancel_count"], sent=row["cancel_sent"])
        return Cancelled(delivery_id, row["cancel_sent"], row["cancel_count"], row["total"],
                         row["requested_by"])

    async def announce_pending(self, older_than_s: float = 10.0) -> int:
        """Publishes the events of cancels committed but never announced."""
        pending = await repository.unannounced_cancels(self._pool, older_than_s)
        for delivery_id in pending:
            await self.cancel(delivery_id, None)  # changes nothing: only announces
        return len(pending)

    async def requester(self, delivery_id: str) -> tuple[bool, str | None]:
        """(the delivery exists, its requested_by)."""
        row = await repository.get_delivery(self._pool, delivery_id)
        return (row is not None, row["requested_by"] if row is not None else None)


class CancelIntake:
    """`delivery.cancel` messages: the requester named in the message must be the one who
    requested the delivery; a cancel that cannot be taken goes to `mail.dead` with its
    reason (it announces nothing: no delivery of its sender is touched)."""

    def __init__(self, canceller: Canceller, dead: DeadLetters) -> None:
        self._canceller = canceller
        self._dead = dead

    async def handle(self, body: bytes, message_id: str | None) -> str:
        try:
            cancel = DeliveryCancel.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError) as error:
            return await self._refuse(body, message_id, Rejection(
                INVALID_REQUEST, f"not a delivery.cancel: {str(error)[:300]}"))
        structlog.contextvars.bind_contextvars(delivery_id=cancel.delivery_id)
        exists, requester = await self._canceller.requester(cancel.delivery_id)
        if not exists:
            return await self._refuse(body, message_id, Rejection(
                UNKNOWN_DELIVERY, "no such delivery (a cancel must follow its request's "
                "delivery.accepted)", cancel.delivery_id))
        if requester != cancel.requested_by:
            return await self._refuse(body, message_id, Rejection(
                NOT_PERMITTED, "only the delivery's requester may cancel it",
                cancel.delivery_id))
        await self._canceller.cancel(cancel.delivery_id, cancel.requested_by)
        return "cancelled"

    async def _refuse(self, body: bytes, message_id: str | None, rejection: Rejection) -> str:
        await self._dead.send(body, message_id, rejection, routing_key=CANCEL_KEY)
        log.warning("delivery.cancel refused", reason=rejection.reason, detail=rejection.detail)
        return f"cancel refused: {rejection.reason}"
