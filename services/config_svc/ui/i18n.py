"""The screens' language: the switch's choice or the browser's; the words are translated by
the service's one catalog (services/config_svc/i18n.py)."""

from fastapi import Request

from services.config_svc.i18n import LANGUAGES, translator

__all__ = ["LANGUAGES", "LANG_COOKIE", "language", "translator"]

LANG_COOKIE = "mail_lang"


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
