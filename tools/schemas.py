"""Writes the JSON Schema of every contract message into a folder (`make schemas`)."""

import sys
from pathlib import Path

import orjson

from shared.messages import MESSAGE_TYPES

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def render_all() -> dict[str, bytes]:
    return {
        f"{model.__name__}.json": orjson.dumps(
            model.model_json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        ) + b"\n"
        for model in MESSAGE_TYPES
    }


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.json"):
        stale.unlink()
    for name, body in render_all().items():
        (target / name).write_bytes(body)
    print(f"wrote {len(MESSAGE_TYPES)} schemas to {target}")


if __name__ == "__main__":
    main()
