"""What a screen shows when a request is refused: signed out, an account error, a form
without its CSRF token."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from services.config_svc.errors import AccountError
from services.config_svc.ui.common import screens_of
from services.config_svc.ui.session import BadCsrf, SignedOut


def install(app: FastAPI) -> None:
    @app.exception_handler(SignedOut)
    async def signed_out(request: Request, _error: SignedOut) -> Response:
        if request.url.path.startswith("/ui/test-mail"):
            return JSONResponse({"ok": False, "detail": "signed out"}, status_code=401)
        return RedirectResponse("/ui/signin", status_code=303)

    @app.exception_handler(AccountError)
    async def account_error(request: Request, error: AccountError) -> Response:
        if not request.url.path.startswith("/ui/"):  # the API's answer, as before
            return JSONResponse({"detail": error.detail}, status_code=error.status)
        ui = screens_of(request)
        try:
            user = ui.user(request)
        except SignedOut:
            user = None
        return ui.render(request, "error.html", status=error.status, user=user,
                         code=error.status if error.status in (403, 404) else None,
                         detail=str(error.detail))

    @app.exception_handler(BadCsrf)
    async def bad_csrf(request: Request, _error: BadCsrf) -> Response:
        return screens_of(request).render(request, "error.html", status=403, code="csrf")
