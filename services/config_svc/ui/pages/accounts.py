"""The accounts list: searched by name (several words, AND or OR), newest first, paginated."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.config_svc.ui.common import Ui

PAGE_SIZE = 20
router = APIRouter()


@router.get("/accounts")
async def accounts(request: Request, ui: Ui, q: str = "", match: str = "any",
                   page: int = 1) -> Response:
    user = ui.user(request)
    page = max(1, page)
    found = await ui.service.search(q[:500] or None, match == "all", PAGE_SIZE,
                                    (page - 1) * PAGE_SIZE, user)
    pages = max(1, -(-found.total // PAGE_SIZE))
    states = await ui.service.states([row.id for row in found.items])
    return ui.render(request, "accounts.html", user=user, found=found, q=q, match=match,
                     page=page, pages=pages, states=states)
