"""Real SMTP servers on 127.0.0.1 for tests, each on a free port, in the test's own event loop.

`smtp_server(...)` is an async context manager yielding a `SmtpTestServer` that records what
clients did: connections, AUTH commands, logins and every message (envelope and bytes). The
named profiles below are recipes for the cases the tests need:

    async with auth_server(users={"user": "pw"}) as server:
        ...  # SmtpEndpoint(server.host, server.port, "none", username="user", password="pw")
        await server.wait_until(lambda: len(server.messages) == 1)

`silent_server()` accepts TCP connections and never greets; `closed_port()` is a port nobody
listens on.
"""

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.certs import Certs

HOST = "127.0.0.1"
AUTH_REFUSED = "535 5.7.8 Username and Password not accepted"
USER_UNKNOWN = "550 5.1.1 User unknown"


class Observable:
    """Something tests wait on: `wait_until(predicate)` wakes on every recorded change."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def changed(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        if not await self._wait(predicate, timeout):
            raise AssertionError(f"condition not met within {timeout} s")

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.add(waiter)
                    try:
                        await waiter
                    finally:
                        self._waiters.discard(waiter)
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    connection: int  # which connection (1, 2, ...) carried it
    started_at: float = 0.0  # time.monotonic() at MAIL FROM
    ended_at: float = 0.0  # time.monotonic() when the DATA reply was given (its 250)


@dataclass
class SmtpTestServer(Observable):
    """An aiosmtpd server and what it saw. Start it with `smtp_server(...)`."""

    tls: Literal["none", "starttls", "ssl"] = "none"
    certs: Certs | None = None
    users: dict[str, str] | None = None  # None: no AUTH offered
    hide_starttls: bool = False
    refuse_recipients: frozenset[str] = frozenset()
    drop_after_data: bool = False
    drop_after_data_every: int = 0  # every N-th message only (N > 0)
    # A provider whose quota is used up: its next `refusals` transactions get `reply` at
    # `stage` ("mail", "rcpt" or "data"), then it takes mail again.
    refusal: tuple[str, str] | None = None
    refusals: int = 0
    data_delay_s: float = 0.0  # a slow provider: the reply to the data comes this much later
    # Awaited after a message was taken, before its 250: a fault injected in the accepted
    # window (the database's connections dropped, say).
    before_reply: Callable[[list[str]], Awaitable[None]] | None = None
    smtputf8: bool = False
    # Awaited at each EHLO with its connection's number (1, 2, ...), before the reply: a
    # change made while a client opens a connection (a cancel committed, say).
    on_ehlo: Callable[[int], Awaitable[None]] | None = None
    idle_timeout_s: float = 300.0
    # A provider's cap: at most `rate_limit[0]` transactions per `rate_limit[1]` seconds;
    # beyond it MAIL FROM is answered 421, like the seed's "every mail after the first few".
    rate_limit: tuple[int, float] | None = None
    refused_by_rate: int = 0
    refused_at: list[float] = field(default_factory=list)  # time.monotonic() of each
    _mail_times: list[float] = field(default_factory=list, init=False, repr=False)
    host: str = HOST
    port: int = 0
    connections: int = 0
    messages: list[Received] = field(default_factory=list)
    auth_attempts: list[str] = field(default_factory=list)  # mechanism of each AUTH command
    logins: list[str] = field(default_factory=list)  # users who logged in
    ehlo_names: list[str] = field(default_factory=list)  # the name in each EHLO
    client_ports: dict[int, int] = field(default_factory=dict)  # connection -> client's port
    _server: asyncio.Server | None = field(default=None, init=False, repr=False)
    _open: set["_RecordingSMTP"] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        Observable.__init__(self)
        if self.tls != "none" and self.certs is None:
            raise ValueError(f"tls={self.tls} needs certs")

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        implicit = self.certs.server_context() if self.tls == "ssl" and self.certs else None
        self._server = await loop.create_server(self._new_connection, self.host, self.port,
                                                ssl=implicit)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.drop_connections()

    async def drop_connections(self) -> None:
        """Close every open connection from the server's side, as an idle timeout would."""
        for connection in list(self._open):
            if connection.transport is not None:
                connection.transport.close()
        if not await self._wait(lambda: not self._open, timeout=1.0):
            # A client that refused our certificate during STARTTLS leaves aiosmtpd waiting
            # for a connection_lost that asyncio never delivers: deliver it ourselves.
            for connection in list(self._open):
                connection.connection_lost(None)

    def _new_connection(self) -> "_RecordingSMTP":
        self.connections += 1
        starttls = self.certs.server_context() if self.tls == "starttls" and self.certs else None
        return _RecordingSMTP(
            self, self.connections, _Handler(self),
            hostname="localhost",  # else aiosmtpd calls getfqdn for each connection
            tls_context=starttls,
            require_starttls=starttls is not None,
            # aiosmtpd offers AUTH only after its own STARTTLS unless told otherwise: the plain
            # profiles take it in clear, and under implicit TLS aiosmtpd cannot tell.
            auth_require_tls=self.tls == "starttls",
            authenticator=self._authenticate,
            enable_SMTPUTF8=self.smtputf8,
            timeout=self.idle_timeout_s,
            loop=asyncio.get_running_loop(),
        )

    def _opened(self, connection: "_RecordingSMTP") -> None:
        self._open.add(connection)
        self.changed()

    def _closed(self, connection: "_RecordingSMTP") -> None:
        self._open.discard(connection)
        self.changed()

    def _authenticate(self, _server: SMTP, _session: Session, _envelope: Envelope,
                      _mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login = auth_data.login.decode()
        if self.users is not None and self.users.get(login) == auth_data.password.decode():
            self.logins.append(login)
            self.changed()
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False, message=AUTH_REFUSED)


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP, telling the test server about connections and AUTH commands.

    Attribute names here must not start with smtp_, auth_ or handle_: aiosmtpd treats those
    as commands, AUTH mechanisms and hooks.
    """

    def __init__(self, test_server: SmtpTestServer, number: int, handler: "_Handler",
                 **kwargs: Any) -> None:
        self.test_server = test_server
        self.number = number
        super().__init__(handler, **kwargs)

    async def smtp_AUTH(self, arg: str) -> None:
        self.test_server.auth_attempts.append((arg or "").split(" ")[0].upper())
        self.test_server.changed()
        await super().smtp_AUTH(arg)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # aiosmtpd calls this again after STARTTLS
        super().connection_made(transport)
        if first:
            self.test_server.client_ports[self.number] = transport.get_extra_info("peername")[1]
            self.test_server._opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self not in self.test_server._open:
            return  # already delivered by drop_connections
        super().connection_lost(error)
        self.test_server._closed(self)


class _Handler:
    def __init__(self, test_server: SmtpTestServer) -> None:
        self.test_server = test_server

    async def handle_EHLO(self, smtp: SMTP, session: Session, _envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # the hook replaces aiosmtpd's own bookkeeping
        self.test_server.ehlo_names.append(hostname)
        if self.test_server.on_ehlo is not None:
            assert isinstance(smtp, _RecordingSMTP)
            await self.test_server.on_ehlo(smtp.number)
        hidden = set()
        if self.test_server.hide_starttls:
            hidden.add("STARTTLS")
        if self.test_server.users is None:
            hidden.add("AUTH")
        return [r for r in responses if r[4:].split(" ")[0].upper() not in hidden]

    def _refused(self, stage: str) -> str | None:
        server = self.test_server
        if server.refusal is not None and server.refusal[0] == stage and server.refusals > 0:
            server.refusals -= 1
            server.changed()
            return server.refusal[1]
        return None

    async def handle_MAIL(self, _smtp: SMTP, _session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        server = self.test_server
        if (refused := self._refused("mail")) is not None:
            return refused
        now = time.monotonic()
        if server.rate_limit is not None:
            limit, window = server.rate_limit
            recent = [t for t in server._mail_times if now - t < window]
            if len(recent) >= limit:
                server.refused_by_rate += 1
                server.refused_at.append(now)
                server.changed()
                return "421 4.7.0 Too many messages, slow down"
        server._mail_times.append(now)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.started_at = now  # type: ignore[attr-defined]
        return "250 OK"

    async def handle_RCPT(self, _smtp: SMTP, _session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.test_server.refuse_recipients:
            return USER_UNKNOWN
        if (refused := self._refused("rcpt")) is not None:
            return refused
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, _session: Session,
                          envelope: Envelope) -> str:
        assert isinstance(smtp, _RecordingSMTP)
        server = self.test_server
        if (refused := self._refused("data")) is not None:
            return refused
        if server.before_reply is not None:
            await server.before_reply(list(envelope.rcpt_tos))
        if server.data_delay_s:
            await asyncio.sleep(server.data_delay_s)
        server.messages.append(Received(
            mail_from=envelope.mail_from or "", rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or b"", mail_options=list(envelope.mail_options),
            connection=smtp.number, started_at=getattr(envelope, "started_at", 0.0),
            ended_at=time.monotonic(),
        ))
        server.changed()
        every = server.drop_after_data_every
        if server.drop_after_data or (every and len(server.messages) % every == 0):
            # Took the message, then vanish without a reply: the client cannot know.
            assert smtp.transport is not None
            smtp.transport.abort()
            await asyncio.get_running_loop().create_future()  # until aiosmtpd cancels us
        return "250 2.0.0 OK queued"


@asynccontextmanager
async def smtp_server(**options: Any) -> AsyncIterator[SmtpTestServer]:
    """A running `SmtpTestServer(**options)`; stopped, connections closed, on exit."""
    server = SmtpTestServer(**options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


ServerContext = AbstractAsyncContextManager[SmtpTestServer]

# -- profiles -------------------------------------------------------------------------------


def auth_server(users: dict[str, str], **options: Any) -> ServerContext:
    """(a) Plain SMTP with AUTH PLAIN/LOGIN; a wrong password gets `535 5.7.8 Username and
    Password not accepted`."""
    return smtp_server(users=users, **options)


def starttls_server(certs: Certs, users: dict[str, str] | None = None,
                    **options: Any) -> ServerContext:
    """(b) STARTTLS required (530 before it), AUTH offered only after it."""
    return smtp_server(tls="starttls", certs=certs, users=users, **options)


def hidden_starttls_server(users: dict[str, str], **options: Any) -> ServerContext:
    """(c) No STARTTLS in EHLO, but AUTH offered in clear: `auth_attempts` shows whether a
    client sent credentials anyway."""
    return smtp_server(users=users, hide_starttls=True, **options)


def implicit_tls_server(certs: Certs, users: dict[str, str] | None = None,
                        **options: Any) -> ServerContext:
    """(d) TLS from the first byte (port 465 style)."""
    return smtp_server(tls="ssl", certs=certs, users=users, **options)


def refusing_rcpt_server(refused: frozenset[str], **options: Any) -> ServerContext:
    """(e) RCPT TO of the given addresses gets `550 5.1.1 User unknown`; others are taken."""
    return smtp_server(refuse_recipients=refused, **options)


def dropping_after_data_server(**options: Any) -> ServerContext:
    """(f) Records the message, then closes the connection without answering the DATA."""
    return smtp_server(drop_after_data=True, **options)


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) but never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((HOST, 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def closed_port() -> int:
    """A port nobody listens on (free a moment ago): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]
