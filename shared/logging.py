"""Structured logging, configured once per process by `configure_logging`.

Every line goes through the standard library's logging so that aio-pika, aiormq, asyncpg
and uvicorn lines look like ours. Secrets are removed twice: values under keys that name a
secret are replaced, and the rendered line is scrubbed of every registered secret value and
of passwords inside URLs, which also covers exception messages and third-party loggers.
"""

import base64
import logging
import re
import sys
from typing import Any, TextIO

import orjson
import structlog

REDACTED = "[REDACTED]"
_SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "secret", "secrets", "token", "authorization", "key", "keys",
     "cookie", "credentials"}
)
_NOT_SECRET = frozenset({"routing_key"})
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):[^@/\s]+@")
_secret_values: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it is scrubbed from every line written after this,
    also as a JSON string escapes it and as AUTH LOGIN sends it (base64)."""
    if value and len(value) >= 4:
        _secret_values.add(value)
        _secret_values.add(orjson.dumps(value).decode()[1:-1])
        _secret_values.add(base64.b64encode(value.encode()).decode())


def register_login(username: str | None, password: str | None) -> None:
    """A login's password and its AUTH PLAIN form (base64 of NUL user NUL password), which
    an SMTP client's frame holds before it is written."""
    register_secret(password)
    if password and len(password) >= 4:
        plain = f"\0{username or ''}\0{password}".encode()
        _secret_values.add(base64.b64encode(plain).decode())


def names_secret(key: str) -> bool:
    lowered = key.lower()
    if lowered in _NOT_SECRET:
        return False
    return any(part in _SECRET_WORDS for part in re.split(r"[_\-.\s]+", lowered))


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if names_secret(str(k)) else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_secret_keys(_logger: Any, _name: str, event_dict: dict) -> dict:
    return _redact(event_dict)


def scrub_text(text: str) -> str:
    text = _URL_PASSWORD.sub(rf"\g<scheme>:{REDACTED}@", text)
    for secret in _secret_values:
        text = text.replace(secret, REDACTED)
    return text


def _scrub_rendered(_logger: Any, _name: str, rendered: str) -> str:
    return scrub_text(rendered)


def _json_dumps(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None,
                      *, once: bool = False) -> None:
    """`once`: this is the process's only configuration (a service's), so each module's
    logger is built on its first use and kept, not built again at every call (~2% of the
    sender's CPU). Tests that configure again and again leave it off."""
    stream = stream or sys.stdout
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    pre_chain: list = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secret_keys,
    ]
    final: list = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if as_json:
        # Without locals: a frame of an SMTP client's AUTH holds the login in base64.
        final += [structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(
            serializer=_json_dumps)]
    else:
        final += [structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback)]
    final.append(_scrub_rendered)

    structlog.configure(
        # Lines below the level are dropped first, before the chain builds them.
        processors=[structlog.stdlib.filter_by_level, *pre_chain,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=once,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=pre_chain, processors=final)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Their INFO lines are connection chatter; warnings and errors still come through.
    if root.level > logging.DEBUG:
        for noisy in ("aiormq", "aio_pika", "asyncpg", "uvicorn.access", "mail.log"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
