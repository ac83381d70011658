"""`SmtpSession`: open, send, reset and close one account's session, each network step
timed out, reported and mapped to an `SmtpStageError` (the rules: the package's docstring)."""

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiosmtplib
from aiosmtplib import SMTPResponse

from shared.smtp import commands
from shared.smtp.details import address_list, ehlo_text, ms_since, reply_text, tls_info
from shared.smtp.endpoint import SmtpEndpoint
from shared.smtp.errors import (
    STEP_FAILURES,
    SmtpStageError,
    Stage,
    StageResult,
    Withdrawn,
    breaks_connection,
    stage_error,
)
from shared.smtp.pop import PopError, PopLogin, pop_login

T = TypeVar("T")

_REDACTED = "[REDACTED]"


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
            await self._step("resolve", self._resolve(), address_list)
            await self._step("connect", self._connect(), reply_text)
            self.connections += 1
            smtp = self._smtp
            assert smtp is not None
            if self.endpoint.tls == "ssl":
                self._report("tls", True, 0.0, "implicit TLS, negotiated while connecting: "
                             + tls_info(smtp))
            elif self.endpoint.tls == "starttls":
                await self._step("tls", self._starttls(smtp), lambda _: tls_info(smtp))
            await self._step("ehlo", self._ehlo(smtp), ehlo_text)
            if self.endpoint.username is not None:
                await self._step("auth", commands.login(
                    smtp, self.endpoint.username, self.endpoint.password or "",
                    self.auth_mechanisms), reply_text)
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
            await self._step("mail", commands.mail(smtp, mail_from, message, smtputf8),
                             reply_text)
            await self._step("rcpt", smtp.rcpt(recipient, encoding=encoding), reply_text)
            if before_data is not None:
                await self._go_ahead(before_data)
            reply = await self._step("data", commands.data(smtp, message, self._data_written),
                                     reply_text)
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
        except STEP_FAILURES:
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
        except STEP_FAILURES:
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

    # -- plumbing -------------------------------------------------------------------------

    async def _step(self, stage: Stage, work: Awaitable[T],
                    detail: Callable[[T], str] = lambda _: "") -> T:
        """Run one network step under the timeout, report it, and map its failure."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await work
        except SmtpStageError as error:
            self._report(error.stage, False, ms_since(started), str(error))
            raise
        except asyncio.CancelledError:
            if stage != "pop":
                self._drop_connection()  # cancelled mid-command: the connection is out of step
            raise
        except STEP_FAILURES as exc:
            if breaks_connection(exc) and stage != "pop":
                self._drop_connection()
            error = stage_error(stage, exc, timeout_s=self.timeout_s,
                                after_data=stage == "data" and self.data_sent,
                                scrub=self._scrub)
            self._report(error.stage, False, ms_since(started), str(error))
            raise error from exc
        self._report(stage, True, ms_since(started), detail(result))
        return result

    def _data_written(self) -> None:
        self.data_sent = True

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
