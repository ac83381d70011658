"""Delivery status over HTTP (port 8081), with the same bearer tokens as the accounts API."""

from typing import Annotated, Any, Literal

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Query

from services.dispatcher import repository
from shared.api import install_common_handlers, user_dependency
from shared.auth import TokenVerifier, User
from shared.http import Health, health_routes

State = Literal["new", "queued", "deferred", "sent", "failed", "unknown"]


def delivery_state(total: int, counts: dict[str, int], completed: bool) -> str:
    if completed or (total and counts["sent"] + counts["failed"] + counts["unknown"] == total):
        return "completed"
    if counts["sent"] or counts["failed"] or counts["unknown"] or counts["deferred"]:
        return "sending"
    return "queued"


def create_app(pool: asyncpg.Pool, verifier: TokenVerifier, health: Health) -> FastAPI:
    app = FastAPI(title="mail-delivery: delivery status", version="1", docs_url="/docs")
    install_common_handlers(app)
    UserDep = Annotated[User, Depends(user_dependency(verifier))]

    async def visible_delivery(delivery_id: str, user: User) -> asyncpg.Record:
        row = await repository.get_delivery(pool, delivery_id)
        # Administrators see every delivery; others the ones they requested.
        if row is None or not (user.is_admin or row["requested_by"] == user.sub):
            raise HTTPException(404, f"no delivery {delivery_id}")
        return row

    @app.get("/v1/deliveries/{delivery_id}")
    async def status(delivery_id: str, user: UserDep) -> dict[str, Any]:
        row = await visible_delivery(delivery_id, user)
        counts = await repository.recipient_counts(pool, delivery_id)
        return {
            "delivery_id": delivery_id,
            "account_id": str(row["account_id"]),
            "state": delivery_state(row["total"], counts, row["completed_at"] is not None),
            "total": row["total"],
            "queued": counts["new"] + counts["queued"],
            "sent": counts["sent"],
            "deferred": counts["deferred"],
            "failed": counts["failed"],
            "unknown": counts["unknown"],
            "created_at": row["created_at"],
            "accepted_at": row["accepted_at"],
            "completed_at": row["completed_at"],
            "metadata": row["metadata"],
        }

    @app.get("/v1/deliveries/{delivery_id}/recipients")
    async def recipients(
        delivery_id: str, user: UserDep, state: State | None = None,
        limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        await visible_delivery(delivery_id, user)
        rows = await repository.recipients(pool, delivery_id, state, limit, offset)
        return {"items": [{"index": r.pop("idx"), **r} for r in rows], "limit": limit,
                "offset": offset}

    app.router.routes.extend(health_routes(health))
    return app
