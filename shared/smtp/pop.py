"""POP-before-SMTP: a POP3 login that makes some mail servers accept SMTP from our address.

The login runs the standard library's poplib in a thread. This module knows nothing of SMTP:
`shared.smtp.session` calls `pop_login` and turns a `PopError` into its own stage error
(stage `pop`), so that the two modules do not import each other.
"""

import asyncio
import contextlib
import poplib
import ssl
from dataclasses import dataclass, field
from typing import Any

from shared.logging import register_login
from shared.messages import Tls


@dataclass(frozen=True)
class PopLogin:
    host: str
    port: int
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        # Also a test mail's password that was never stored (so never decrypted).
        register_login(self.username, self.password)


class PopError(Exception):
    """A failed POP login: `text` is the server's -ERR line or the OS/TLS error, verbatim."""

    def __init__(self, text: str, exception: str, *, permanent: bool) -> None:
        super().__init__(text)
        self.text = text
        self.exception = exception
        self.permanent = permanent


async def pop_login(login: PopLogin, tls: Tls, ssl_context: ssl.SSLContext,
                    timeout_s: float) -> None:
    """USER, PASS, QUIT. Raises PopError; permanent only when the server refused the login."""
    await asyncio.to_thread(_login, login, tls, ssl_context, timeout_s)


def _login(login: PopLogin, tls: Tls, ssl_context: ssl.SSLContext, timeout_s: float) -> None:
    refusal_is_permanent = False  # a refused greeting or STLS is not a refused login
    client: poplib.POP3 | None = None
    try:
        client = _connect(login, tls, ssl_context, timeout_s)
        refusal_is_permanent = True
        client.user(login.username)
        client.pass_(login.password)
        _quit(client)
    except poplib.error_proto as exc:
        raise PopError(_server_text(exc), "error_proto", permanent=refusal_is_permanent) from exc
    except TimeoutError as exc:
        text = f"timed out after {timeout_s:g} s"
        raise PopError(text, "TimeoutError", permanent=False) from exc
    except OSError as exc:  # refused, reset, certificate or other TLS errors
        raise PopError(str(exc), type(exc).__name__, permanent=False) from exc
    finally:
        if client is not None:
            client.close()


class _ClosedOnFailure:
    """poplib leaves its socket open when the greeting is refused or never comes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self.file = getattr(self, "file", None)
            self.sock = getattr(self, "sock", None)
            self.close()  # type: ignore[attr-defined]
            raise


class _POP3(_ClosedOnFailure, poplib.POP3):
    pass


class _POP3SSL(_ClosedOnFailure, poplib.POP3_SSL):
    pass


def _connect(login: PopLogin, tls: Tls, ssl_context: ssl.SSLContext,
             timeout_s: float) -> poplib.POP3:
    # poplib verifies nothing unless given a verifying context: always pass ours.
    if tls == "ssl":
        return _POP3SSL(login.host, login.port, timeout=timeout_s, context=ssl_context)
    client = _POP3(login.host, login.port, timeout=timeout_s)
    if tls == "starttls":
        try:
            client.stls(context=ssl_context)  # raises when the server does not offer STLS
        except BaseException:
            client.close()
            raise
    return client


def _quit(client: poplib.POP3) -> None:
    """Say goodbye; the login, not the goodbye, is what opens SMTP, so errors here are ignored."""
    with contextlib.suppress(poplib.error_proto, OSError):
        client.quit()


def _server_text(exc: poplib.error_proto) -> str:
    reply = exc.args[0] if exc.args else ""
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return str(reply)
