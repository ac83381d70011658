"""The screens: sign in and out, the accounts list, the registration form with "Send test
mail", an account's page, and a delivery registered by hand with its status page. They call
the same service layer as the API (no HTTP round trip to config_svc itself); deliveries go
through the dispatcher's API with the signed-in user's token, so its rules hold."""

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError

from services.config_svc.accounts import AccountService
from services.config_svc.errors import AccountError
from services.config_svc.schemas import AccountFields, AccountPatch, UnsavedTestMail
from services.config_svc.ui.forms import (
    ACCOUNT_FIELDS,
    account_values,
    errors_of,
    recipients_of,
)
from services.config_svc.ui.i18n import LANG_COOKIE, LANGUAGES, language, translator
from services.config_svc.ui.session import BadCsrf, Sessions, SignedOut
from shared.auth import InvalidToken, User

HERE = Path(__file__).parent
PAGE_SIZE = 20
# No inline script or style anywhere: the one script and the one stylesheet are files.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def mount_ui(app: FastAPI, service: AccountService, sessions: Sessions,
             dispatcher_url: str) -> None:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True))
    router = APIRouter(prefix="/ui")

    def render(request: Request, template: str, status: int = 200,
               user: User | None = None, **values: Any) -> Response:
        lang = language(request)
        html = env.get_template(template).render(
            _=translator(lang), lang=lang, languages=LANGUAGES, user=user,
            csrf=sessions.csrf(request) if user else "", path=request.url.path, **values)
        return _headers(HTMLResponse(html, status_code=status))

    async def form_of(request: Request) -> dict[str, str]:
        form = await request.form()
        return {key: value for key, value in form.items() if isinstance(value, str)}

    async def checked(request: Request) -> tuple[User, dict[str, str]]:
        user = sessions.user(request)
        values = await form_of(request)
        sessions.check_csrf(request, values.get("csrf"))
        return user, values

    # -- signing in ---------------------------------------------------------------------

    @router.get("/")
    async def home() -> Response:
        return RedirectResponse("/ui/accounts", status_code=303)

    def signin_form(request: Request, status: int = 200, error: bool = False) -> Response:
        token = sessions.signin_token(request)
        response = render(request, "signin.html", status=status, error=error,
                          signin_csrf=token)
        sessions.keep_signin_token(request, response, token)
        return response

    @router.get("/signin")
    async def signin_page(request: Request) -> Response:
        return signin_form(request)

    @router.post("/signin")
    async def signin(request: Request) -> Response:
        values = await form_of(request)
        sessions.check_signin_csrf(request, values.get("csrf"))
        response = RedirectResponse("/ui/accounts", status_code=303)
        try:
            sessions.sign_in(request, response, values.get("token", "").strip())
        except InvalidToken:
            return signin_form(request, status=401, error=True)
        return _headers(response)

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        await checked(request)
        response = RedirectResponse("/ui/signin", status_code=303)
        sessions.sign_out(response)
        return _headers(response)

    @router.get("/lang/{code}")
    async def switch_language(code: str, back: str = "/ui/accounts") -> Response:
        target = back if back.startswith("/ui/") else "/ui/accounts"
        response = RedirectResponse(target, status_code=303)
        if code in LANGUAGES:
            response.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, samesite="strict",
                                path="/ui")
        return response

    # -- accounts -----------------------------------------------------------------------

    @router.get("/accounts")
    async def accounts(request: Request, q: str = "", match: str = "any",
                       page: int = 1) -> Response:
        user = sessions.user(request)
        page = max(1, page)
        found = await service.search(q[:500] or None, match == "all", PAGE_SIZE,
                                     (page - 1) * PAGE_SIZE, user)
        pages = max(1, -(-found.total // PAGE_SIZE))
        states = await service.states([row.id for row in found.items])
        return render(request, "accounts.html", user=user, found=found, q=q, match=match,
                      page=page, pages=pages, states=states)

    @router.get("/accounts/new")
    async def new_account(request: Request) -> Response:
        user = sessions.user(request)
        if not user.is_admin:
            return render(request, "error.html", status=403, user=user, code=403)
        return render(request, "account_form.html", user=user, account=None,
                      values={"smtp_port": "587", "tls": "starttls", "send_interval_ms": "6000"},
                      errors={}, fields=ACCOUNT_FIELDS)

    @router.post("/accounts/new")
    async def create_account(request: Request) -> Response:
        user, values = await checked(request)
        try:
            fields = AccountFields.model_validate(account_values(values, partial=False))
            created = await service.create(fields, user)
        except (ValidationError, AccountError) as error:
            return render(request, "account_form.html", status=422, user=user, account=None,
                          values=values, errors=errors_of(error), fields=ACCOUNT_FIELDS)
        return await saved(request, user, created.id, created.warnings)

    async def saved(request: Request, user: User, account_id: str,
                    warnings: list[str]) -> Response:
        """The account's page; with the API's warnings said once when there are any."""
        if not warnings:
            return RedirectResponse(f"/ui/accounts/{account_id}", status_code=303)
        return await account_view(request, user, account_id, warnings=warnings)

    async def account_view(request: Request, user: User, account_id: str,
                           warnings: list[str] | None = None) -> Response:
        account = await service.get(account_id, user)
        state = (await service.states([account.id]))[account.id]
        recent = await recent_deliveries(request, {"account_id": account.id, "limit": 10})
        return render(request, "account.html", user=user, account=account, state=state,
                      deliveries=recent, waiting=request.query_params.get("waiting"),
                      warnings=warnings or [])

    @router.get("/accounts/{account_id}")
    async def account_page(request: Request, account_id: str) -> Response:
        return await account_view(request, sessions.user(request), account_id)

    @router.get("/accounts/{account_id}/edit")
    async def edit_account(request: Request, account_id: str) -> Response:
        user = sessions.user(request)
        account = await service.get(account_id, user)
        values = {key: "" if value is None else str(value)
                  for key, value in account.model_dump().items()}
        values["standby_account_ids"] = " ".join(account.standby_account_ids)
        values["allowed_from"] = " ".join(account.allowed_from)
        return render(request, "account_form.html", user=user, account=account,
                      values=values, errors={}, fields=ACCOUNT_FIELDS)

    @router.post("/accounts/{account_id}/edit")
    async def update_account(request: Request, account_id: str) -> Response:
        user, values = await checked(request)
        account = await service.get(account_id, user)
        try:
            patch = AccountPatch.model_validate(account_values(values, partial=True))
            updated = await service.update(account_id, patch, user)
        except (ValidationError, AccountError) as error:
            return render(request, "account_form.html", status=422, user=user,
                          account=account, values=values, errors=errors_of(error),
                          fields=ACCOUNT_FIELDS)
        return await saved(request, user, account_id, updated.warnings)

    @router.post("/accounts/{account_id}/{action}")
    async def account_action(request: Request, account_id: str, action: str) -> Response:
        user, values = await checked(request)
        if action in ("pause", "resume"):
            await service.set_paused(account_id, action == "pause", user)
        elif action == "delete":
            try:
                await service.delete(account_id, values.get("force") == "yes", user)
            except AccountError as error:
                if error.status != 409:
                    raise
                return RedirectResponse(f"/ui/accounts/{account_id}?waiting=1",
                                        status_code=303)
            return RedirectResponse("/ui/accounts", status_code=303)
        else:
            return render(request, "error.html", status=404, user=user, code=404)
        return RedirectResponse(f"/ui/accounts/{account_id}", status_code=303)

    @router.post("/test-mail")
    async def test_mail(request: Request) -> Response:
        """The form's values, saved or not, as JSON from ui.js; the CSRF token in a header."""
        user = sessions.user(request)
        sessions.check_csrf(request, request.headers.get("x-csrf-token"))
        values = orjson.loads(await request.body())
        lang = language(request)
        try:
            form = {**account_values(values, partial=False), "to": values.get("to", "")}
            if values.get("account_id"):  # a saved account's form: its stored passwords
                report = await service.test_mails.edited(str(values["account_id"]), form,
                                                         lang, user)
            else:
                report = await service.test_mails.unsaved(
                    UnsavedTestMail.model_validate(form), lang, user)
        except (ValidationError, AccountError) as error:
            return _headers(JSONResponse({"ok": False, "errors": errors_of(error)},
                                         status_code=422))
        return _headers(JSONResponse(report.model_dump(mode="json")))

    # -- deliveries, through the dispatcher's API ---------------------------------------

    # One client for every page: a new one costs tens of ms (its TLS context).
    client = httpx.AsyncClient(base_url=dispatcher_url, timeout=10)

    @asynccontextmanager
    async def dispatcher(request: Request) -> AsyncIterator[httpx.AsyncClient]:
        """The dispatcher's API as the signed-in user (their token, so its rules hold)."""
        token = request.cookies.get("mail_session", "")
        yield _AsUser(client, {"Authorization": f"Bearer {token}"})  # type: ignore[misc]

    async def recent_deliveries(request: Request, params: dict[str, Any]) -> list[dict] | None:
        """None when the dispatcher cannot be asked (the page still shows)."""
        try:
            async with dispatcher(request) as client:
                answer = await client.get("/v1/deliveries", params=params)
        except httpx.HTTPError:
            return None
        return answer.json()["items"] if answer.is_success else None

    @router.get("/deliveries")
    async def deliveries(request: Request, account: str = "", state: str = "") -> Response:
        user = sessions.user(request)
        params: dict[str, Any] = {"limit": 50}
        if account:
            params["account_id"] = account
        if state in ("active", "scheduled", "paused", "completed"):
            params["state"] = state
        choices = await service.search(None, False, 500, 0, user)
        names = {row.id: row.name for row in choices.items}
        return render(request, "deliveries.html", user=user,
                      deliveries=await recent_deliveries(request, params), accounts=choices.items,
                      names=names, account=account, state=state)

    @router.get("/deliveries/new")
    async def new_delivery(request: Request) -> Response:
        user = sessions.user(request)
        choices = await service.search(None, False, 500, 0, user)
        return render(request, "delivery_form.html", user=user, accounts=choices.items,
                      values={}, error=None)

    @router.post("/deliveries/new")
    async def create_delivery(request: Request) -> Response:
        user, values = await checked(request)
        body: dict[str, Any] = {
            "delivery_id": values.get("delivery_id") or f"ui-{_short_id()}",
            "subject": values.get("subject", ""), "recipients": recipients_of(
                values.get("recipients", "")), "requested_by": user.sub}
        for key in ("text", "html"):
            if values.get(key, "").strip():
                body[key] = values[key]
        if values.get("account_id"):
            body["account_id"] = values["account_id"]
        async with dispatcher(request) as client:
            answer = await client.post("/v1/deliveries", json=body)
        if answer.status_code != 202:
            choices = await service.search(None, False, 500, 0, user)
            detail = answer.json().get("detail") if answer.headers.get(
                "content-type", "").startswith("application/json") else answer.text
            return render(request, "delivery_form.html", status=422, user=user,
                          accounts=choices.items, values=values, error=str(detail))
        return RedirectResponse(f"/ui/deliveries/{quote(body['delivery_id'])}",
                                status_code=303)

    @router.get("/deliveries/{delivery_id}")
    async def delivery_page(request: Request, delivery_id: str) -> Response:
        user = sessions.user(request)
        async with dispatcher(request) as client:
            answer = await client.get(f"/v1/deliveries/{quote(delivery_id)}")
            problems = await client.get(f"/v1/deliveries/{quote(delivery_id)}/recipients",
                                        params={"state": "failed"})
            unknown = await client.get(f"/v1/deliveries/{quote(delivery_id)}/recipients",
                                       params={"state": "unknown"})
        if answer.status_code == 404:
            # Published, not yet stored by the dispatcher (or not the user's): wait a moment.
            return render(request, "delivery.html", user=user, delivery=None,
                          delivery_id=delivery_id, problems=[], refresh=True)
        answer.raise_for_status()
        delivery = answer.json()
        items = problems.json()["items"] + unknown.json()["items"] if problems.is_success \
            else []
        return render(request, "delivery.html", user=user, delivery=delivery,
                      delivery_id=delivery_id, problems=items,
                      refresh=delivery["state"] != "completed")

    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    @app.exception_handler(SignedOut)
    async def signed_out(request: Request, _error: SignedOut) -> Response:
        if request.url.path.startswith("/ui/test-mail"):
            return JSONResponse({"ok": False, "detail": "signed out"}, status_code=401)
        return RedirectResponse("/ui/signin", status_code=303)

    @app.exception_handler(AccountError)
    async def account_error(request: Request, error: AccountError) -> Response:
        if not request.url.path.startswith("/ui/"):  # the API's answer, as before
            return JSONResponse({"detail": error.detail}, status_code=error.status)
        try:
            user = sessions.user(request)
        except SignedOut:
            user = None
        return render(request, "error.html", status=error.status, user=user,
                      code=error.status if error.status in (403, 404) else None,
                      detail=str(error.detail))

    @app.exception_handler(BadCsrf)
    async def bad_csrf(request: Request, _error: BadCsrf) -> Response:
        return render(request, "error.html", status=403, code="csrf")


class _AsUser:
    """The shared client, each call with the user's token."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self._client = client
        self._headers = headers

    async def get(self, url: str, **options: Any) -> httpx.Response:
        return await self._client.get(url, headers=self._headers, **options)

    async def post(self, url: str, **options: Any) -> httpx.Response:
        return await self._client.post(url, headers=self._headers, **options)


def _short_id() -> str:
    return secrets.token_hex(6)
