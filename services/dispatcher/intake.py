"""A delivery request from bytes to `delivery.accepted` or `delivery.rejected`."""

import hashlib
from datetime import UTC, datetime

import structlog
from aio_pika.abc import AbstractChannel

from services.dispatcher import repository
from services.dispatcher.decode import decode_request
from services.dispatcher.fanout import FanOut, Unroutable
from services.dispatcher.locks import DeliveryLocks
from services.dispatcher.rejection import DUPLICATE_DELIVERY, UNKNOWN_ACCOUNT, Rejection
from services.dispatcher.validate import prepare
from shared.messages import (
    DeliveryAccepted,
    DeliveryCompleted,
    DeliveryRejected,
    Event,
    stable_event_id,
)
from shared.topology import EventPublisher, Topology, make_message, publish

log = structlog.get_logger(__name__)


class DeadLetters:
    """Where a refused request goes: `mail.dead`, with the reason in its headers."""

    def __init__(self, channel: AbstractChannel, topology: Topology) -> None:
        self._channel = channel  # a confirmed channel: acked only once it is in mail.dead
        self._topology = topology

    async def send(self, body: bytes, message_id: str | None, rejection: Rejection,
                   routing_key: str = "delivery.request") -> None:
        headers = {
            "x-reason": rejection.reason,
            "x-detail": rejection.detail[:1000],
            "x-delivery-id": rejection.delivery_id or "",
            "x-original-exchange": self._topology.requests_exchange,
            "x-original-routing-key": routing_key,
        }
        dead = await self._channel.get_exchange(self._topology.dead_exchange, ensure=False)
        await publish(dead, routing_key,
                      make_message(body, message_id=message_id or "", headers=headers))


class Intake:
    def __init__(self, locks: DeliveryLocks, fanout: FanOut, events: EventPublisher,
                 dead: DeadLetters, max_bytes: int) -> None:
        self._locks = locks
        self._fanout = fanout
        self._events = events
        self._dead = dead
        self._max_bytes = max_bytes

    async def handle(self, body: bytes, message_id: str | None,
                     ignore_suppressions: bool = False) -> str:
        """Returns the outcome (accepted, already accepted, rejected) for the log line.
        Raises only for infrastructure failures: then the request is tried again.
        `ignore_suppressions`: the suppression list does not apply (a trusted publisher's
        password reset, say: consumer.py decides)."""
        try:
            return await self._accept(body, message_id, ignore_suppressions)
        except Rejection as rejection:
            await self._reject(body, message_id, rejection)
            return f"rejected: {rejection.reason}"

    async def _accept(self, body: bytes, message_id: str | None,
                      ignore_suppressions: bool) -> str:
        request = decode_request(body, message_id, self._max_bytes)
        structlog.contextvars.bind_contextvars(delivery_id=request.delivery_id)
        # The same request whatever its spelling (by HTTP or AMQP); the first version stored
        # the hash of the bytes, which a byte-identical repeat still matches.
        sha256 = request.canonical_sha256()
        urgent = request.priority == "high"
        scheduled = request.send_at is not None and request.send_at > datetime.now(UTC)
        async with self._locks.hold(request.delivery_id) as db:
            stored = await repository.get_delivery(db, request.delivery_id)
            if stored is not None and stored["request_sha256"] not in (
                    sha256, hashlib.sha256(body).digest()):
                raise Rejection(DUPLICATE_DELIVERY, "a different request with this delivery_id "
                                "was accepted before; nothing of this one is sent",
                                request.delivery_id)
            if stored is not None and stored["accepted_at"] is not None:
                return "already accepted"  # a repeat
            if stored is None:
                # On the locked connection: no second one taken from the pool while this
                # one is held (requests in hand at once would wait on each other).
                prepared = prepare(request, await repository.find_account(
                    db, request.account_id))
                await self._require_queue(prepared.account_id, request.delivery_id, urgent)
                suppressed = set() if ignore_suppressions else (
                    await repository.suppressed_among(
                        db, [r.email for r in prepared.recipients]))
                left_out = await repository.store(db, prepared, sha256, scheduled, suppressed)
                account_id, total = prepared.account_id, len(prepared.recipients)
                # The recipients are in the database now; the fan-out reads them back a
                # window at a time. Without them here, a large request's peak memory is
                # its decoding's, not that plus the fan-out's.
                del prepared
                request = request.model_copy(update={"recipients": []})
            else:  # redelivered after a crash half-way: publish only what is not queued yet
                account_id, total = str(stored["account_id"]), stored["total"]
                left_out = stored["suppressed"]
                # Stored already: a queue gone now is a fault to retry, not a refusal.
                await self._fanout.require_queue(account_id, urgent)
            structlog.contextvars.bind_contextvars(account_id=account_id)
            published = 0
            if not scheduled:  # else the schedule fans it out at its time (schedule.py)
                published = await self._fanout.publish(db, request.delivery_id, account_id,
                                                        urgent)
            await self._events.publish(DeliveryAccepted(
                event_id=stable_event_id(request.delivery_id, "accepted"),
                delivery_id=request.delivery_id, metadata=request.metadata,
                account_id=account_id, recipients=total, suppressed=left_out,
                send_at=request.send_at if scheduled else None))
            if left_out == total:  # nothing to send: complete as it is stored
                await self._events.publish(DeliveryCompleted(
                    event_id=stable_event_id(request.delivery_id, "completed"),
                    delivery_id=request.delivery_id, metadata=request.metadata, sent=0,
                    failed=0, suppressed=left_out, total=total))
            await repository.mark_accepted(db, request.delivery_id, fanned_out=not scheduled)
        log.info("delivery accepted", recipients=total, published_now=published,
                 suppressed=left_out,
                 send_at=request.send_at.isoformat() if scheduled and request.send_at else None)
        return "scheduled" if scheduled else "accepted"

    async def _require_queue(self, account_id: str, delivery_id: str, urgent: bool) -> None:
        """Before anything is stored: a request whose account has no queue (deleted a moment
        ago, or its creation unfinished) is refused at once, not retried into the dead
        letters without a word."""
        try:
            await self._fanout.require_queue(account_id, urgent)
        except Unroutable as error:
            raise Rejection(UNKNOWN_ACCOUNT, f"{error}: the account is being deleted, or its "
                            "creation did not finish; nothing was sent", delivery_id) from None

    async def _reject(self, body: bytes, message_id: str | None, rejection: Rejection) -> None:
        if rejection.delivery_id is not None:
            metadata = await self._metadata_of(body)
            event: Event = DeliveryRejected(delivery_id=rejection.delivery_id,
                                            metadata=metadata, reason=rejection.reason,
                                            detail=rejection.detail)
            await self._events.publish(event)
        await self._dead.send(body, message_id, rejection)
        log.warning("delivery rejected", reason=rejection.reason, detail=rejection.detail,
                    delivery_id=rejection.delivery_id)

    async def _metadata_of(self, body: bytes) -> dict:
        """The request's metadata, echoed in the rejection when it can be read."""
        if len(body) > self._max_bytes:
            return {}
        try:
            request = decode_request(body, None, self._max_bytes)
        except Rejection:
            return {}
        return request.metadata
