"""Japanese and English, in one gettext catalog for all that config_svc says: the screens'
words, and the test mail's report and hints (which the API returns too). The msgids are the
English words; `ui/locales/ja/LC_MESSAGES/messages.po` has the Japanese, read with Babel at
start (no compile step)."""

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from babel.messages.pofile import read_po

Lang = Literal["en", "ja"]
LANGUAGES: tuple[Lang, ...] = ("ja", "en")
# Under ui/ as the screens were its first users; the API's hints share it.
_LOCALES = Path(__file__).parent / "ui" / "locales"


def _catalog(lang: str) -> dict[str, str]:
    path = _LOCALES / lang / "LC_MESSAGES" / "messages.po"
    if not path.exists():
        return {}
    with path.open("rb") as file:
        catalog = read_po(file, locale=lang)
    return {str(m.id): str(m.string) for m in catalog if m.id and m.string}


CATALOGS = {lang: _catalog(lang) for lang in LANGUAGES}


def translator(lang: str) -> Callable[[str], str]:
    words = CATALOGS.get(lang, {})

    def gettext(message: str) -> str:
        return words.get(message, message)

    return gettext


def pick_language(accept_language: str | None) -> Lang:
    """The API's choice: ja when Japanese is preferred per the header's q-values, else en.

    Each language gets the q of its most specific matching range ("ja-JP", "ja", then "*");
    unlisted languages get 0; a tie goes to English.
    """
    ranges: dict[str, float] = {}
    for item in (accept_language or "").split(","):
        tag, *params = (part.strip() for part in item.split(";"))
        if not tag:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges[tag.lower()] = max(q, ranges.get(tag.lower(), 0.0))
    return "ja" if _quality(ranges, "ja") > _quality(ranges, "en") else "en"


def _quality(ranges: dict[str, float], language: str) -> float:
    specific = [q for tag, q in ranges.items() if tag == language or tag.startswith(language + "-")]
    if specific:
        return max(specific)
    return ranges.get("*", 0.0)
