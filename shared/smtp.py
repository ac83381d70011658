"""One SMTP session of one account: used by the config service's test mail and by the sender.

`SmtpSession` wraps aiosmtplib with the project's rules:

- every network step runs under `asyncio.timeout(timeout_s)`, and every failure becomes an
  `SmtpStageError` naming the stage that failed, the server's reply verbatim and whether
  retrying could help (`permanent`);
- TLS is exactly what the account says: `starttls` is required, never opportunistic, so a
  server that hides STARTTLS never sees the password; certificates are always verified;
- a session stays open between messages; a refused transaction is reset with RSET; a lost
  connection is reopened by the next `send`;
- after the DATA payload was written, a lost connection is ambiguous (`after_data`): the
  server may have accepted the message.

One task uses a session at a time. Passwords never appear in reprs, errors or stage details.
"""

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import aiosmtplib
from aiosmtplib import SMTPResponse

from shared.logging import register_login
from shared.messages import Tls
from shared.pop import PopError, PopLogin, pop_login

__all__ = [
    "PopLogin",
    "SmtpEndpoint",
    "SmtpSession",
    "SmtpStageError",
    "Stage",
    "StageResult",
    "Tls",
    "client_ssl_context",
]

Stage = Literal["resolve", "connect", "tls", "ehlo", "pop", "auth", "mail", "rcpt", "data"]
T = TypeVar("T")

_REDACTED = "[REDACTED]"
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_STEP_FAILURES = (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError)


@dataclass(frozen=True)
class SmtpEndpoint:
    host: str
    port: int
    tls: Tls
    local_hostname: str | None = None
    username: str | None = None  # None: no AUTH
    password: str | None = field(default=None, repr=False)
    pop: PopLogin | None = None

    def __post_init__(self) -> None:
        # Also a test mail's password that was never stored (so never decrypted).
        register_login(self.username, self.password)


class SmtpStageError(Exception):
    """A failed stage: `text` is the server's reply (or the OS/TLS error) verbatim.

    `permanent` is True for a 5xx reply and for a message this server can never take
    (SMTPUTF8 needed but not offered); 4xx, timeouts, connection and TLS errors are not.
    `after_data` is True when the DATA payload had been written before the failure.
    """

    def __init__(self, stage: Stage, code: int | None, text: str, exception: str, *,
                 permanent: bool, after_data: bool = False) -> None:
        self.stage = stage
        self.code = code
        self.text = text
        self.exception = exception
        self.permanent = permanent
        self.after_data = after_data
        reply = f"{code} {text}" if code is not None else text
        super().__init__(f"{stage} failed: {reply}")

    @property
    def ambiguous(self) -> bool:
        """The payload was written but no reply came: the server may have accepted it."""
        return self.after_data and self.code is None


class Withdrawn(Exception):
    """`before_data` withdrew the message: the transaction was reset before DATA."""


@dataclass
class StageResult:
    stage: Stage
    ok: bool
    duration_ms: float
    detail: str = ""


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verifying context (ssl.create_default_context); extra CA file trusted when given
    (tests use a self-signed CA)."""
    context = ssl.create_default_context()
    if ca_file:
        # In addition to the system's CAs: create_default_context(cafile=) would replace them.
        context.load_verify_locations(cafile=ca_file)
    return context


class SmtpSession:
    def __init__(self, endpoint: SmtpEndpoint, *, ssl_context: ssl.SSLContext,
                 timeout_s: float = 10.0, pop_max_age_s: float = 300.0,
                 on_stage: Callable[[StageResult], None] | None = None) -> None:
        self.endpoint = endpoint
        self.ssl_context = ssl_context
        self.timeout_s = timeout_s
        self.pop_max_age_s = pop_max_age_s
        self.on_stage = on_stage
        self.capabilities: dict[str, str] = {}
        self.auth_mechanisms: list[str] = []
        self.data_sent = False
        self.connections = 0  # connections opened so far: a caller can tell a new one began
        self._smtp: aiosmtplib.SMTP | None = None
        self._pop_at: float | None = None  # time.monotonic() of the last POP login
        self._secrets = [s for s in (endpoint.password, endpoint.pop and endpoint.pop.password)
                         if s]

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<SmtpSession {self.endpoint.host}:{self.endpoint.port} {state}>"

    @property
    def is_open(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def open(self) -> None:
        """POP login when due, then resolve, connect, TLS, EHLO and AUTH. No-op when open."""
        if self.is_open:
            return
        self._drop_connection()
        try:
            await self._pop_login_if_due()
            await self._step("resolve", self._resolve(), _addresses)
            await self._step("connect", self._connect(), _reply)
            self.connections += 1
            smtp = self._smtp
            assert smtp is not None
            if self.endpoint.tls == "ssl":
                self._report("tls", True, 0.0, "implicit TLS, negotiated while connecting: "
                             + _tls_info(smtp))
            elif self.endpoint.tls == "starttls":
                await self._step("tls", self._starttls(smtp), lambda _: _tls_info(smtp))
            await self._step("ehlo", self._ehlo(smtp), _reply_first_line)
            if self.endpoint.username is not None:
                await self._step("auth", self._login(smtp), _reply)
        except SmtpStageError:
            await self.close()
            raise

    async def send(self, mail_from: str, recipient: str, message: bytes,
                   before_data: Callable[[], Awaitable[bool]] | None = None) -> tuple[int, str]:
        """MAIL, RCPT, DATA (opening the session first when needed); the DATA reply.

        A refused transaction is reset, so that the session serves the next message.
        `before_data`, awaited between RCPT and DATA, can still withdraw the message (reset,
        `Withdrawn` raised): a check that runs while the envelope is on the wire.
        """
        reused = self.is_open
        try:
            return await self._transaction(mail_from, recipient, message, before_data)
        except SmtpStageError as error:
            # A server that closed an idle connection makes a reused session fail at its
            # first command, before anything was sent: one more try on a new connection.
            stale = (reused and not self.is_open and error.stage == "mail"
                     and error.exception == "SMTPServerDisconnected")
            if not stale:
                raise
        return await self._transaction(mail_from, recipient, message, before_data)

    async def _transaction(self, mail_from: str, recipient: str, message: bytes,
                           before_data: Callable[[], Awaitable[bool]] | None) -> tuple[int, str]:
        if self.is_open:
            await self._pop_login_if_due()  # a long session can outlive the POP authorisation
        else:
            await self.open()
        smtp = self._smtp
        assert smtp is not None
        self.data_sent = False
        smtputf8 = not (mail_from + recipient).isascii()
        encoding = "utf-8" if smtputf8 else "ascii"
        try:
            await self._step("mail", self._mail(smtp, mail_from, message, smtputf8), _reply)
            await self._step("rcpt", smtp.rcpt(recipient, encoding=encoding), _reply)
            if before_data is not None:
                await self._go_ahead(before_data)
            reply = await self._step("data", self._data(smtp, message), _reply)
        except SmtpStageError:
            if self.is_open:
                await self.reset()
            raise
        return reply.code, reply.message

    async def _go_ahead(self, before_data: Callable[[], Awaitable[bool]]) -> None:
        try:
            go = await before_data()
        except asyncio.CancelledError:
            self._drop_connection()  # no time for RSET: the next send opens a new connection
            raise
        except Exception:
            await self.reset()
            raise
        if not go:
            await self.reset()
            raise Withdrawn

    async def reset(self) -> None:
        """RSET, for reuse between messages after a failed transaction; drops the connection
        when even that fails (the next `send` reopens it)."""
        if not self.is_open:
            return
        assert self._smtp is not None
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._smtp.rset()
        except _STEP_FAILURES:
            self._drop_connection()

    async def close(self) -> None:
        """QUIT politely with a timeout, then close; never raises."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                async with asyncio.timeout(self.timeout_s):
                    await smtp.quit()
        except _STEP_FAILURES:
            pass  # the server is gone or rude: closing is all that is left
        finally:
            smtp.close()

    # -- stages ---------------------------------------------------------------------------

    async def _pop_login_if_due(self) -> None:
        pop = self.endpoint.pop
        if pop is None:
            return
        if self._pop_at is not None and time.monotonic() - self._pop_at < self.pop_max_age_s:
            return
        await self._step("pop", self._pop_login(pop), lambda _: f"logged in as {pop.username}")
        self._pop_at = time.monotonic()

    async def _pop_login(self, pop: PopLogin) -> None:
        try:
            await pop_login(pop, self.endpoint.tls, self.ssl_context, self.timeout_s)
        except PopError as exc:
            raise SmtpStageError("pop", None, self._scrub(exc.text), exc.exception,
                                 permanent=exc.permanent) from exc

    async def _resolve(self) -> list[str]:
        # A stage of its own so that a misspelt host is told apart from an unreachable one.
        # aiosmtplib looks the name up again to connect: it must keep the name, not an
        # address, for the certificate check.
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.endpoint.host, self.endpoint.port,
                                       type=socket.SOCK_STREAM)
        return [info[4][0] for info in infos]

    async def _connect(self) -> SMTPResponse:
        endpoint = self.endpoint
        # start_tls=False: aiosmtplib's default (None) upgrades only when the server offers
        # STARTTLS, which would send the password in clear to a server that hides it.
        # timeout=None: our asyncio.timeout is the one clock for every step.
        smtp = aiosmtplib.SMTP(
            hostname=endpoint.host, port=endpoint.port, local_hostname=endpoint.local_hostname,
            use_tls=endpoint.tls == "ssl", start_tls=False, tls_context=self.ssl_context,
            timeout=None,
        )
        self._smtp = smtp
        return await smtp.connect()  # the greeting

    async def _starttls(self, smtp: aiosmtplib.SMTP) -> None:
        await self._ehlo(smtp)
        if not smtp.supports_extension("starttls"):
            # Before any AUTH: no credentials may cross an unencrypted connection.
            raise SmtpStageError("tls", None, "server did not offer STARTTLS", "SMTPNotSupported",
                                 permanent=False)
        await smtp.starttls(tls_context=self.ssl_context)
        self.capabilities = {}  # learnt before TLS: worthless now (RFC 3207)
        self.auth_mechanisms = []

    async def _ehlo(self, smtp: aiosmtplib.SMTP) -> SMTPResponse:
        reply = await smtp.ehlo()
        self.capabilities = dict(smtp.esmtp_extensions)
        self.auth_mechanisms = self.capabilities.get("auth", "").upper().split()
        return reply

    async def _login(self, smtp: aiosmtplib.SMTP) -> SMTPResponse:
        if not smtp.supports_extension("auth"):
            raise SmtpStageError("auth", None, "server offered no AUTH mechanism",
                                 "SMTPNotSupported", permanent=False)
        if not smtp.supported_auth_methods:
            offered = " ".join(self.auth_mechanisms)
            raise SmtpStageError(
                "auth", None,
                f"server offered AUTH {offered}, none of CRAM-MD5, PLAIN, LOGIN",
                "SMTPNotSupported", permanent=False)
        assert self.endpoint.username is not None
        return await smtp.login(self.endpoint.username, self.endpoint.password or "")

    async def _mail(self, smtp: aiosmtplib.SMTP, mail_from: str, message: bytes,
                    smtputf8: bool) -> SMTPResponse:
        options = []
        if smtputf8:
            if not smtp.supports_extension("smtputf8"):
                raise SmtpStageError(
                    "mail", None,
                    "an address is not ASCII and the server does not offer SMTPUTF8",
                    "SMTPNotSupported", permanent=True)
            options.append("SMTPUTF8")
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(message)}")
        if not message.isascii() and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        return await smtp.mail(mail_from, options=options,
                               encoding="utf-8" if smtputf8 else "ascii")

    async def _data(self, smtp: aiosmtplib.SMTP, message: bytes) -> SMTPResponse:
        # DATA in two halves (aiosmtplib's data() is one call) so that we know whether the
        # payload was written before a failure: after it, a lost reply is ambiguous.
        reply = await smtp.execute_command(b"DATA")
        if reply.code != 354:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.data_sent = True
        protocol.write(_data_payload(message))
        reply = await protocol.read_response()
        if reply.code != 250:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        return reply

    # -- plumbing -------------------------------------------------------------------------

    async def _step(self, stage: Stage, work: Awaitable[T],
                    detail: Callable[[T], str] = lambda _: "") -> T:
        """Run one network step under the timeout, report it, and map its failure."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await work
        except SmtpStageError as error:
            self._report(error.stage, False, _ms_since(started), str(error))
            raise
        except asyncio.CancelledError:
            if stage != "pop":
                self._drop_connection()  # cancelled mid-command: the connection is out of step
            raise
        except _STEP_FAILURES as exc:
            if _breaks_connection(exc) and stage != "pop":
                self._drop_connection()
            error = self._stage_error(stage, exc)
            self._report(error.stage, False, _ms_since(started), str(error))
            raise error from exc
        self._report(stage, True, _ms_since(started), detail(result))
        return result

    def _stage_error(self, stage: Stage, exc: BaseException) -> SmtpStageError:
        after_data = stage == "data" and self.data_sent
        if isinstance(exc, TimeoutError):
            return SmtpStageError(stage, None, f"timed out after {self.timeout_s:g} s",
                                  "TimeoutError", permanent=False, after_data=after_data)
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
            return SmtpStageError(stage, exc.code, self._scrub(exc.message), type(exc).__name__,
                                  permanent=500 <= exc.code <= 599, after_data=after_data)
        # aiosmtplib wraps the OS error of a failed connect: report the real one.
        if isinstance(exc, aiosmtplib.SMTPConnectError) and isinstance(exc.__cause__, OSError):
            exc = exc.__cause__
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            stage = "tls"  # implicit TLS fails inside connect
        text = exc.message if isinstance(exc, aiosmtplib.SMTPException) else str(exc)
        permanent = isinstance(exc, ValueError) and not isinstance(exc, OSError)
        return SmtpStageError(stage, None, self._scrub(text), type(exc).__name__,
                              permanent=permanent, after_data=after_data)

    def _report(self, stage: Stage, ok: bool, duration_ms: float, detail: str) -> None:
        if self.on_stage is not None:
            self.on_stage(StageResult(stage, ok, duration_ms, self._scrub(detail)))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def _drop_connection(self) -> None:
        """Close without QUIT: after a timeout or a lost connection there is nobody to tell."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()


def _breaks_connection(exc: BaseException) -> bool:
    """Timeouts, lost connections and unreadable replies leave the connection out of step."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code <= 0  # aiosmtplib's -1: a reply it could not parse
    return isinstance(exc, TimeoutError | OSError)


def _data_payload(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends, leading dots doubled, ending CRLF.CRLF."""
    payload = _LINE_END.sub(b"\r\n", message)
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    return _LEADING_DOT.sub(b"..", payload) + b".\r\n"


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _reply(reply: SMTPResponse) -> str:
    return f"{reply.code} {reply.message}"


def _reply_first_line(reply: SMTPResponse) -> str:
    """An EHLO reply lists every extension: its first line (the server's name) is enough."""
    lines = reply.message.splitlines()
    return f"{reply.code} {lines[0] if lines else ''}".strip()


def _addresses(addresses: list[str]) -> str:
    return ", ".join(dict.fromkeys(addresses))


def _tls_info(smtp: aiosmtplib.SMTP) -> str:
    ssl_object = smtp.get_transport_info("ssl_object")
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()
