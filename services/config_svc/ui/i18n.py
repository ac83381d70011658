"""Japanese and English: the templates' words are English msgids, translated by the gettext
catalogs in `locales/` (read with Babel at start, no compile step)."""

from collections.abc import Callable
from pathlib import Path

from babel.messages.pofile import read_po
from fastapi import Request

LANGUAGES = ("ja", "en")
LANG_COOKIE = "mail_lang"
_LOCALES = Path(__file__).parent / "locales"


def _catalog(lang: str) -> dict[str, str]:
    path = _LOCALES / lang / "LC_MESSAGES" / "messages.po"
    if not path.exists():
        return {}
    with path.open("rb") as file:
        catalog = read_po(file, locale=lang)
    return {str(m.id): str(m.string) for m in catalog if m.id and m.string}


CATALOGS = {lang: _catalog(lang) for lang in LANGUAGES}


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


def translator(lang: str) -> Callable[[str], str]:
    words = CATALOGS.get(lang, {})

    def gettext(message: str) -> str:
        return words.get(message, message)

    return gettext
