"""How the commands print: JSON for machines, else aligned tables and plain lines."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

import orjson


def write_json(value: Any, out: TextIO) -> None:
    out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def _cut(value: Any, width: int) -> str:
    text = "-" if value is None or value == "" else " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], widths: Sequence[int],
          out: TextIO) -> None:
    """Columns cut to at most `widths` characters; the last one is not padded."""
    cells = [[_cut(value, width) for value, width in zip(row, widths, strict=True)]
             for row in [headers, *rows]]
    sizes = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(cell.ljust(size) for cell, size in zip(row[:-1], sizes, strict=False))
        out.write((line + "  " + row[-1]).rstrip() + "\n")


def when(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else None
