"""What every screen shares: its template rendered in the reader's language, the security
headers, the signed-in user and the CSRF check of its forms. One `Screens` per app
(`mount_ui` keeps it in the app's state), given to each page as the dependency `Ui`."""

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from services.config_svc.accounts import AccountService
from services.config_svc.i18n import LANGUAGES, translator
from services.config_svc.ui.dispatcher import Dispatcher
from services.config_svc.ui.session import Sessions
from shared.auth import User

HERE = Path(__file__).parent
LANG_COOKIE = "mail_lang"
# No inline script or style anywhere: the one script and the one stylesheet are files.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def secured(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def language(request: Request) -> str:
    """The switch's choice (a cookie), else the browser's first known language."""
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    for part in request.headers.get("accept-language", "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return "en"


async def form_of(request: Request) -> dict[str, str]:
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


class Screens:
    def __init__(self, service: AccountService, sessions: Sessions,
                 dispatcher: Dispatcher) -> None:
        self.service = service
        self.sessions = sessions
        self.dispatcher = dispatcher
        self._templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                      autoescape=select_autoescape(default=True))

    def render(self, request: Request, template: str, status: int = 200,
               user: User | None = None, **values: Any) -> Response:
        lang = language(request)
        html = self._templates.get_template(template).render(
            _=translator(lang), lang=lang, languages=LANGUAGES, user=user,
            csrf=self.sessions.csrf(request) if user else "", path=request.url.path, **values)
        return secured(HTMLResponse(html, status_code=status))

    def user(self, request: Request) -> User:
        """The signed-in user; raises SignedOut (the sign-in page) without one."""
        return self.sessions.user(request)

    async def checked(self, request: Request) -> tuple[User, dict[str, str]]:
        """The signed-in user and the form they posted, its CSRF token checked."""
        user = self.sessions.user(request)
        values = await form_of(request)
        self.sessions.check_csrf(request, values.get("csrf"))
        return user, values


def screens_of(request: Request) -> Screens:
    return request.app.state.screens


Ui = Annotated[Screens, Depends(screens_of)]
