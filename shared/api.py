"""What the HTTP APIs share: bearer-token users, and validation errors that echo no input."""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.auth import InvalidToken, TokenVerifier, User


class Unauthorized(Exception):
    pass


def install_common_handlers(app: FastAPI) -> None:
    @app.exception_handler(Unauthorized)
    async def unauthorized(_request: Request, error: Unauthorized) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the offending input, which may be a password.
        errors = [
            {"loc": list(e["loc"]), "msg": _message(e), "type": e["type"]}
            for e in error.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)


def user_dependency(verifier: TokenVerifier) -> Callable[..., Awaitable[User]]:
    """A FastAPI dependency: the user of a valid bearer token, else 401."""
    bearer = HTTPBearer(auto_error=False)

    async def current_user(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> User:
        if credentials is None:
            raise Unauthorized("a bearer token is required")
        try:
            return verifier.verify(credentials.credentials)
        except InvalidToken as error:
            raise Unauthorized(f"invalid token: {error}") from None

    return current_user


def _message(error: dict[str, Any]) -> str:
    field = next((str(part) for part in reversed(error["loc"]) if isinstance(part, str)), "")
    return f"{field}: {error['msg']}" if field and field != "body" else error["msg"]
