"""Deliveries over HTTP (port 8081), with the same bearer tokens as the accounts API: their
status, a delivery request for systems without AMQP, and cancel."""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StringConstraints

from services.dispatcher import repository
from services.dispatcher.cancel import Canceller
from services.dispatcher.decode import decode_request
from services.dispatcher.locks import DeliveryLocks
from services.dispatcher.rejection import TOO_LARGE, Rejection
from services.dispatcher.validate import account_uuid
from shared.addresses import check_address
from shared.api import install_common_handlers, user_dependency
from shared.auth import TokenVerifier, User
from shared.http import Health, health_routes
from shared.messages import DeliveryRequest

State = Literal["new", "scheduled", "queued", "deferred", "sent", "failed", "unknown",
                "cancelled", "expired", "suppressed", "bounced"]
# Publishes a request into `mail.requests` with a confirm: once it returns, it is queued; the
# flag asks the intake to leave the suppression list aside (administrators only).
RequestPublisher = Callable[[DeliveryRequest, bool], Awaitable[None]]
SETTLED = ("sent", "failed", "unknown", "cancelled", "expired", "suppressed", "bounced")


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, StringConstraints(min_length=3, max_length=320)]
    reason: repository.SuppressionReason = "manual"
    detail: Annotated[str, StringConstraints(max_length=1000)] | None = None


def delivery_state(row: Any, started: bool, settled: int | None = None) -> str:
    """`started`: some recipient was tried; `settled`: how many are settled, when counted."""
    if row["completed_at"] is not None or (row["total"] and settled == row["total"]):
        return "completed"
    if row["paused_at"] is not None:
        return "paused"
    if row["fanned_out_at"] is None and row["send_at"] is not None:
        return "scheduled"
    return "sending" if started else "queued"


def counted_state(row: Any, counts: dict[str, int]) -> str:
    """A delivery's state from the count of its recipients by state."""
    return delivery_state(row, any(counts[state] for state in ("deferred", *SETTLED)),
                          sum(counts[state] for state in SETTLED))


def listed_state(row: Any) -> str:
    """A delivery's state from its own counters (no count of its recipients)."""
    return delivery_state(row, any(row[name] for name in ("sent", "failed", "unknown",
                                                          "cancelled")))


def create_app(pool: asyncpg.Pool, locks: DeliveryLocks, verifier: TokenVerifier, health: Health,
               canceller: Canceller, publish_request: RequestPublisher,
               max_request_bytes: int, wake_schedule: Callable[[], None] = lambda: None,
               ) -> FastAPI:
    app = FastAPI(title="mail-delivery: deliveries", version="1", docs_url="/docs")
    install_common_handlers(app)
    UserDep = Annotated[User, Depends(user_dependency(verifier))]

    @app.exception_handler(Rejection)
    async def refused(_request: Request, rejection: Rejection) -> JSONResponse:
        status = 413 if rejection.reason == TOO_LARGE else 422
        return JSONResponse({"reason": rejection.reason, "detail": rejection.detail,
                             "delivery_id": rejection.delivery_id}, status_code=status)

    # In this order: it is the order of the routes in the OpenAPI document.
    _suppression_routes(app, pool, UserDep)
    _request_routes(app, pool, UserDep, publish_request, max_request_bytes)
    _control_routes(app, pool, locks, canceller, UserDep, wake_schedule)
    _status_routes(app, pool, UserDep)
    app.router.routes.extend(health_routes(health))
    return app


async def _visible_delivery(pool: asyncpg.Pool, delivery_id: str, user: User) -> asyncpg.Record:
    row = await repository.get_delivery(pool, delivery_id)
    # Administrators see every delivery; others the ones they requested.
    if row is None or not (user.is_admin or row["requested_by"] == user.sub):
        raise HTTPException(404, f"no delivery {delivery_id}")
    return row


def _require_admin(user: User) -> None:
    if not user.is_admin:
        raise HTTPException(403, "only an administrator may read or change the "
                            "suppression list")


def _suppression_routes(app: FastAPI, pool: asyncpg.Pool, UserDep: Any) -> None:
    @app.get("/v1/suppressions")
    async def suppressions(user: UserDep, q: str | None = Query(None, max_length=320),
                           limit: int = Query(50, ge=1, le=500),
                           offset: int = Query(0, ge=0)) -> dict[str, Any]:
        _require_admin(user)
        rows, total = await repository.list_suppressions(pool, q, limit, offset)
        return {"items": [dict(row) for row in rows], "total": total, "limit": limit,
                "offset": offset}

    @app.post("/v1/suppressions", status_code=201)
    async def add_suppression(body: SuppressionIn, user: UserDep) -> dict[str, Any]:
        _require_admin(user)
        try:
            email = check_address(body.email)
        except ValueError as error:
            raise HTTPException(422, f"email: {error}") from None
        return dict(await repository.suppress(pool, email, body.reason, user.sub,
                                              body.detail))

    @app.delete("/v1/suppressions/{email}", status_code=204)
    async def remove_suppression(email: str, user: UserDep) -> Response:
        _require_admin(user)
        if not await repository.unsuppress(pool, email):
            raise HTTPException(404, "not on the suppression list")
        return Response(status_code=204)


def _request_routes(app: FastAPI, pool: asyncpg.Pool, UserDep: Any,
                    publish_request: RequestPublisher, max_request_bytes: int) -> None:
    @app.post("/v1/deliveries", status_code=202)
    async def request_delivery(request: Request, user: UserDep,
                               ignore_suppressions: bool = False) -> dict[str, Any]:
        """The body of a `delivery.request`, decoded as strictly as the AMQP way; once queued
        it takes the same path (validation, idempotency, events, status)."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_request_bytes:
                raise Rejection(TOO_LARGE, f"the request is over {max_request_bytes} bytes")
        delivery = decode_request(body, None, max_request_bytes)
        if delivery.requested_by is None:
            delivery = DeliveryRequest.model_validate(  # the recipients are not copied
                {**delivery.model_dump(exclude={"recipients"}, exclude_unset=True),
                 "recipients": delivery.recipients, "requested_by": user.sub})
        elif delivery.requested_by != user.sub and not user.is_admin:
            raise HTTPException(403, "requested_by may name only yourself (administrators "
                                "may name anyone)")
        if ignore_suppressions and not user.is_admin:
            raise HTTPException(403, "only an administrator may send past the suppression "
                                "list")
        await publish_request(delivery, ignore_suppressions)
        return {"delivery_id": delivery.delivery_id,
                "status": f"/v1/deliveries/{delivery.delivery_id}"}

    @app.get("/v1/deliveries")
    async def list_deliveries(
        user: UserDep, account_id: str | None = None,
        state: Literal["active", "scheduled", "paused", "completed"] | None = None,
        limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        """Recent deliveries, newest first: an administrator's are everyone's, a user's the
        ones they requested."""
        if account_id is not None and account_uuid(account_id) is None:
            return {"items": [], "total": 0, "limit": limit, "offset": offset}
        rows, total = await repository.list_deliveries(
            pool, requested_by=None if user.is_admin else user.sub,
            account_id=account_uuid(account_id), state=state, limit=limit, offset=offset)
        items = []
        for row in rows:
            item = dict(row)
            item["account_id"] = str(row["account_id"])
            item["state"] = listed_state(row)
            for name in ("fanned_out_at", "paused_at"):
                item.pop(name)
            items.append(item)
        return {"items": items, "total": total, "limit": limit, "offset": offset}


def _control_routes(app: FastAPI, pool: asyncpg.Pool, locks: DeliveryLocks,
                    canceller: Canceller, UserDep: Any,
                    wake_schedule: Callable[[], None]) -> None:
    @app.post("/v1/deliveries/{delivery_id}/cancel")
    async def cancel(delivery_id: str, user: UserDep, request: Request) -> dict[str, Any]:
        body = (await request.body()).strip()
        if body not in (b"", b"{}"):
            raise HTTPException(422, "the cancel takes an empty body or {}")
        await _visible_delivery(pool, delivery_id, user)  # its requester or an administrator
        done = await canceller.cancel(delivery_id, user.sub)
        if done is None:
            raise HTTPException(404, f"no delivery {delivery_id}")
        return done.as_json()

    @app.post("/v1/deliveries/{delivery_id}/pause")
    async def pause(delivery_id: str, user: UserDep) -> dict[str, Any]:
        """The delivery's jobs are taken out of the account's queue as they come up (its
        other deliveries go on); its recipients wait as `scheduled` until resumed."""
        row = await _visible_delivery(pool, delivery_id, user)
        # Under the delivery's lock: after a fan-out in progress (the intake's, the
        # schedule's), so that a resume's fan-out always comes after it.
        async with locks.hold(delivery_id) as db:
            if row["paused_at"] is None and await repository.pause(db, delivery_id) is None:
                raise HTTPException(409, "the delivery is cancelled or complete")
        return {"delivery_id": delivery_id, "state": "paused"}

    @app.post("/v1/deliveries/{delivery_id}/resume")
    async def resume(delivery_id: str, user: UserDep) -> dict[str, Any]:
        await _visible_delivery(pool, delivery_id, user)
        async with locks.hold(delivery_id) as db:
            resumed = await repository.resume(db, delivery_id)
        if resumed is not None:
            wake_schedule()  # what was taken out goes back into the queue at once
        row = await _visible_delivery(pool, delivery_id, user)
        counts = await repository.recipient_counts(pool, delivery_id)
        return {"delivery_id": delivery_id, "state": counted_state(row, counts)}


def _status_routes(app: FastAPI, pool: asyncpg.Pool, UserDep: Any) -> None:
    @app.get("/v1/deliveries/{delivery_id}")
    async def status(delivery_id: str, user: UserDep) -> dict[str, Any]:
        row = await _visible_delivery(pool, delivery_id, user)
        counts = await repository.recipient_counts(pool, delivery_id)
        return {
            "delivery_id": delivery_id,
            "account_id": str(row["account_id"]),
            "state": counted_state(row, counts),
            "total": row["total"],
            "queued": counts["new"] + counts["queued"],
            "scheduled": counts["scheduled"],
            "sent": counts["sent"],
            "deferred": counts["deferred"],
            "failed": counts["failed"],
            "unknown": counts["unknown"],
            "cancelled": counts["cancelled"],
            "expired": counts["expired"],
            "suppressed": counts["suppressed"],
            "bounced": counts["bounced"],
            "priority": row["priority"],
            "send_at": row["send_at"],
            "expires_at": row["expires_at"],
            "created_at": row["created_at"],
            "accepted_at": row["accepted_at"],
            "cancelled_at": row["cancelled_at"],
            "paused_at": row["paused_at"],
            "completed_at": row["completed_at"],
            "metadata": row["metadata"],
        }

    @app.get("/v1/deliveries/{delivery_id}/recipients")
    async def recipients(
        delivery_id: str, user: UserDep, state: State | None = None,
        limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        await _visible_delivery(pool, delivery_id, user)
        rows = await repository.recipients(pool, delivery_id, state, limit, offset)
        return {"items": [{"index": r.pop("idx"), **r} for r in rows], "limit": limit,
                "offset": offset}
