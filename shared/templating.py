"""Placeholders in subjects and bodies: `{{name}}`, `{{email}}` and `{{KEY}}` for each key of a
recipient's `vars` (CONTRACT.md §1).

The dispatcher parses each text once to check, before storing a delivery, that every recipient
can fill every placeholder; the sender parses once per delivery and renders per recipient, on
the hot path: parsing splits the source into literal and placeholder parts, rendering only
joins them.

Spaces are allowed inside the braces (`{{ name }}`); keys are `[A-Za-z0-9_.-]+`. Anything
else in double braces (`{{ two words }}`, `{{}}`) is plain text, left as it is.
"""

import html as html_lib
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Template", "missing_names", "recipient_values"]

_PLACEHOLDER = re.compile(r"\{\{[ \t]*([A-Za-z0-9_.-]+)[ \t]*\}\}")


@dataclass(frozen=True)
class Template:
    """One text (subject, text or html), parsed once.

    `parts` alternates literal text (even indexes) and placeholder names (odd indexes), so it
    always has an odd length; a text without placeholders is one literal.
    """

    source: str
    html: bool
    parts: tuple[str, ...]
    names: frozenset[str]

    @classmethod
    def parse(cls, source: str, *, html: bool) -> "Template":
        # re.split with one group gives exactly literal, name, literal, ..., literal.
        parts = tuple(_PLACEHOLDER.split(source))
        return cls(source=source, html=html, parts=parts, names=frozenset(parts[1::2]))

    def render(self, values: Mapping[str, str]) -> str:
        """The text with every placeholder filled; in html, values are HTML-escaped (quotes
        too, since a value may land in an attribute). The caller guarantees that `values` has
        every name in `names` (see `missing_names`)."""
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        out = list(parts)
        if self.html:
            escape = html_lib.escape
            for i in range(1, len(out), 2):
                out[i] = escape(values[out[i]], True)
        else:
            for i in range(1, len(out), 2):
                out[i] = values[out[i]]
        return "".join(out)


def recipient_values(email: str, name: str | None, vars: Mapping[str, str]) -> dict[str, str]:
    """What one recipient's placeholders are filled with.

    `name` and `email` are reserved: they always mean the recipient's own fields, and keys of
    the same names in `vars` are ignored, so a request cannot make `{{email}}` show another
    address than the one the mail goes to. A recipient without a name has no `name` value,
    even when `vars` has one: a template using `{{name}}` is then refused by the dispatcher
    (`missing_placeholder`) rather than filled from somewhere else.
    """
    values = dict(vars)
    values.pop("name", None)
    values["email"] = email
    if name is not None:
        values["name"] = name
    return values


def missing_names(names: frozenset[str], values: Mapping[str, str]) -> set[str]:
    """The placeholder names that `values` cannot fill."""
    return {name for name in names if name not in values}
