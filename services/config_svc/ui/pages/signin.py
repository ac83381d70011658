"""Signing in with a token, signing out, and the language switch in the header."""

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from services.config_svc.i18n import LANGUAGES
from services.config_svc.ui.common import LANG_COOKIE, Screens, Ui, form_of, secured
from shared.auth import InvalidToken

router = APIRouter()


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/ui/accounts", status_code=303)


def signin_form(ui: Screens, request: Request, status: int = 200,
                error: bool = False) -> Response:
    token = ui.sessions.signin_token(request)
    response = ui.render(request, "signin.html", status=status, error=error, signin_csrf=token)
    ui.sessions.keep_signin_token(request, response, token)
    return response


@router.get("/signin")
async def signin_page(request: Request, ui: Ui) -> Response:
    return signin_form(ui, request)


@router.post("/signin")
async def signin(request: Request, ui: Ui) -> Response:
    values = await form_of(request)
    ui.sessions.check_signin_csrf(request, values.get("csrf"))
    response = RedirectResponse("/ui/accounts", status_code=303)
    try:
        ui.sessions.sign_in(request, response, values.get("token", "").strip())
    except InvalidToken:
        return signin_form(ui, request, status=401, error=True)
    return secured(response)


@router.post("/signout")
async def signout(request: Request, ui: Ui) -> Response:
    await ui.checked(request)
    response = RedirectResponse("/ui/signin", status_code=303)
    ui.sessions.sign_out(response)
    return secured(response)


@router.get("/lang/{code}")
async def switch_language(code: str, back: str = "/ui/accounts") -> Response:
    target = back if back.startswith("/ui/") else "/ui/accounts"
    response = RedirectResponse(target, status_code=303)
    if code in LANGUAGES:
        response.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, samesite="strict",
                            path="/ui")
    return response
