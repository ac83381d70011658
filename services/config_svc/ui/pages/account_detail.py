"""An account's page (its settings, state and recent deliveries) and its buttons: pause,
resume, delete."""

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from services.config_svc.errors import AccountError
from services.config_svc.ui.common import Screens, Ui
from shared.auth import User

router = APIRouter()


async def account_view(ui: Screens, request: Request, user: User, account_id: str,
                       warnings: list[str] | None = None) -> Response:
    account = await ui.service.get(account_id, user)
    state = (await ui.service.states([account.id]))[account.id]
    recent = await ui.dispatcher.recent(request, {"account_id": account.id, "limit": 10})
    return ui.render(request, "account.html", user=user, account=account, state=state,
                     deliveries=recent, waiting=request.query_params.get("waiting"),
                     warnings=warnings or [])


@router.get("/accounts/{account_id}")
async def account_page(request: Request, account_id: str, ui: Ui) -> Response:
    return await account_view(ui, request, ui.user(request), account_id)


@router.post("/accounts/{account_id}/{action}")
async def account_action(request: Request, account_id: str, action: str, ui: Ui) -> Response:
    user, values = await ui.checked(request)
    if action in ("pause", "resume"):
        await ui.service.set_paused(account_id, action == "pause", user)
    elif action == "delete":
        try:
            await ui.service.delete(account_id, values.get("force") == "yes", user)
        except AccountError as error:
            if error.status != 409:
                raise
            return RedirectResponse(f"/ui/accounts/{account_id}?waiting=1", status_code=303)
        return RedirectResponse("/ui/accounts", status_code=303)
    else:
        return ui.render(request, "error.html", status=404, user=user, code=404)
    return RedirectResponse(f"/ui/accounts/{account_id}", status_code=303)
