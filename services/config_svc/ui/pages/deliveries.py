"""Delivery status (the recent deliveries, a delivery's page) and a delivery registered by
hand, all through the dispatcher's API as the signed-in user."""

import secrets
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from services.config_svc.ui.common import Ui
from services.config_svc.ui.forms import recipients_of

router = APIRouter()


@router.get("/deliveries")
async def deliveries(request: Request, ui: Ui, account: str = "", state: str = "") -> Response:
    user = ui.user(request)
    params: dict[str, Any] = {"limit": 50}
    if account:
        params["account_id"] = account
    if state in ("active", "scheduled", "paused", "completed"):
        params["state"] = state
    choices = await ui.service.search(None, False, 500, 0, user)
    names = {row.id: row.name for row in choices.items}
    return ui.render(request, "deliveries.html", user=user,
                     deliveries=await ui.dispatcher.recent(request, params),
                     accounts=choices.items, names=names, account=account, state=state)


@router.get("/deliveries/new")
async def new_delivery(request: Request, ui: Ui) -> Response:
    user = ui.user(request)
    choices = await ui.service.search(None, False, 500, 0, user)
    return ui.render(request, "delivery_form.html", user=user, accounts=choices.items,
                     values={}, error=None)


@router.post("/deliveries/new")
async def create_delivery(request: Request, ui: Ui) -> Response:
    user, values = await ui.checked(request)
    body: dict[str, Any] = {
        "delivery_id": values.get("delivery_id") or f"ui-{secrets.token_hex(6)}",
        "subject": values.get("subject", ""),
        "recipients": recipients_of(values.get("recipients", "")), "requested_by": user.sub}
    for key in ("text", "html"):
        if values.get(key, "").strip():
            body[key] = values[key]
    if values.get("account_id"):
        body["account_id"] = values["account_id"]
    answer = await ui.dispatcher.as_user(request).post("/v1/deliveries", json=body)
    if answer.status_code != 202:
        choices = await ui.service.search(None, False, 500, 0, user)
        detail = answer.json().get("detail") if answer.headers.get(
            "content-type", "").startswith("application/json") else answer.text
        return ui.render(request, "delivery_form.html", status=422, user=user,
                         accounts=choices.items, values=values, error=str(detail))
    return RedirectResponse(f"/ui/deliveries/{quote(body['delivery_id'])}", status_code=303)


@router.get("/deliveries/{delivery_id}")
async def delivery_page(request: Request, delivery_id: str, ui: Ui) -> Response:
    user = ui.user(request)
    dispatcher = ui.dispatcher.as_user(request)
    answer = await dispatcher.get(f"/v1/deliveries/{quote(delivery_id)}")
    problems = await dispatcher.get(f"/v1/deliveries/{quote(delivery_id)}/recipients",
                                    params={"state": "failed"})
    unknown = await dispatcher.get(f"/v1/deliveries/{quote(delivery_id)}/recipients",
                                   params={"state": "unknown"})
    if answer.status_code == 404:
        # Published, not yet stored by the dispatcher (or not the user's): wait a moment.
        return ui.render(request, "delivery.html", user=user, delivery=None,
                         delivery_id=delivery_id, problems=[], refresh=True)
    answer.raise_for_status()
    delivery = answer.json()
    items = problems.json()["items"] + unknown.json()["items"] if problems.is_success else []
    return ui.render(request, "delivery.html", user=user, delivery=delivery,
                     delivery_id=delivery_id, problems=items,
                     refresh=delivery["state"] != "completed")
