"""The accounts HTTP API (CONTRACT.md §5): FastAPI routes over `AccountService`."""

import json
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.config_svc.accounts import AccountService
from services.config_svc.errors import AccountError, NotFound
from services.config_svc.i18n import pick_language
from services.config_svc.schemas import (
    AccountFields,
    AccountOut,
    AccountPage,
    AccountPatch,
    Match,
    TestMailTo,
    UnsavedTestMail,
)
from services.config_svc.testmail import TestMailReport
from shared.api import install_common_handlers, user_dependency
from shared.auth import TokenVerifier, User
from shared.crypto import UndecryptableSecret
from shared.http import Health, health_routes


class BodyLimit:
    """Refuses bodies over the limit with 413 before they are read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLarge:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        await response({"type": "http"}, _no_receive, send)


class _BodyTooLarge(Exception):
    pass


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


async def strict_json(request: Request) -> None:
    """A key given twice is refused: which one would win is a guess we do not make."""
    body = await request.body()
    if body:
        try:
            json.loads(body, object_pairs_hook=_no_duplicates)
        except _DuplicateKey as error:
            raise AccountError(f"duplicate key in the JSON body: {error}") from None


def create_app(service: AccountService, verifier: TokenVerifier, health: Health,
               max_body_bytes: int) -> FastAPI:
    app = FastAPI(title="mail-delivery: accounts", version="1", docs_url="/docs")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    install_common_handlers(app)
    _answer_refusals(app)
    UserDep = Annotated[User, Depends(user_dependency(verifier))]
    Lang = Annotated[str | None, Header(alias="Accept-Language")]
    writes = [Depends(strict_json)]

    @app.get("/v1/accounts", response_model=AccountPage)
    async def list_accounts(
        user: UserDep, q: str | None = Query(None, max_length=500), match: Match = "any",
        limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0),
    ) -> AccountPage:
        return await service.search(q, match == "all", limit, offset, user)

    @app.post("/v1/accounts", response_model=AccountOut, status_code=201, dependencies=writes)
    async def create_account(fields: AccountFields, user: UserDep) -> AccountOut:
        return await service.create(fields, user)

    @app.post("/v1/accounts/test-mail", response_model=TestMailReport, dependencies=writes)
    async def test_unsaved(fields: UnsavedTestMail, user: UserDep,
                           accept_language: Lang = None) -> TestMailReport:
        return await service.test_mails.unsaved(fields, pick_language(accept_language), user)

    @app.get("/v1/accounts/{account_id}", response_model=AccountOut)
    async def read_account(account_id: str, user: UserDep) -> AccountOut:
        return await service.get(_uuid(account_id), user)

    @app.patch("/v1/accounts/{account_id}", response_model=AccountOut, dependencies=writes)
    async def change_account(account_id: str, patch: AccountPatch, user: UserDep) -> AccountOut:
        return await service.update(_uuid(account_id), patch, user)

    @app.delete("/v1/accounts/{account_id}", status_code=204)
    async def delete_account(account_id: str, user: UserDep, force: bool = False) -> Response:
        await service.delete(_uuid(account_id), force, user)
        return Response(status_code=204)

    @app.post("/v1/accounts/{account_id}/pause", response_model=AccountOut)
    async def pause(account_id: str, user: UserDep) -> AccountOut:
        return await service.set_paused(_uuid(account_id), True, user)

    @app.post("/v1/accounts/{account_id}/resume", response_model=AccountOut)
    async def resume(account_id: str, user: UserDep) -> AccountOut:
        return await service.set_paused(_uuid(account_id), False, user)

    @app.post("/v1/accounts/{account_id}/test-mail", response_model=TestMailReport,
              dependencies=writes)
    async def test_saved(account_id: str, body: TestMailTo, user: UserDep,
                         accept_language: Lang = None) -> TestMailReport:
        return await service.test_mails.saved(_uuid(account_id), body.to,
                                              pick_language(accept_language), user)

    app.router.routes.extend(health_routes(health))
    return app


def _answer_refusals(app: FastAPI) -> None:
    @app.exception_handler(AccountError)
    async def account_error(_request: Request, error: AccountError) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status)

    @app.exception_handler(UndecryptableSecret)
    async def undecryptable(_request: Request, error: UndecryptableSecret) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=500)


def _uuid(value: str) -> str:
    """Account ids are UUIDs; anything else cannot name an account."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(f"no account {value}") from None
