"""A bounce mailbox, read over IMAP (preferred) or POP3 with the standard library's clients
in a thread, each network step under the socket's timeout.

What a reader needs and no more: the messages' stable ids, one message's bytes, and its
removal. IMAP marks a message \\Deleted and expunges that message alone (UID EXPUNGE,
UIDPLUS; a server without it gets one EXPUNGE at the end of the session), so a person's own
deleted mail in a shared mailbox is left to them; POP3 deletes at QUIT. A message whose
removal was lost (a reader killed before the expunge or the QUIT) is listed again: the
reader knows it by its id and removes it without reading it twice.

A session left on an exception or a cancel sends nothing more: its socket is shut, which
also ends a call still blocked in its thread.
"""

import asyncio
import contextlib
import imaplib
import poplib
import socket
import ssl
from dataclasses import dataclass, field
from typing import Literal, Protocol

from shared.logging import register_login
from shared.messages import Tls

Protocol_ = Literal["imap", "pop3"]
_DEFAULT_PORTS = {("imap", True): 993, ("imap", False): 143,
                  ("pop3", True): 995, ("pop3", False): 110}
# poplib refuses a line over 2,048 bytes, and an HTML bounce may hold a longer one: the
# message could never be read and would stop its mailbox's reader at it for ever.
poplib._MAXLINE = max(poplib._MAXLINE, 1 << 20)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Mailbox:
    protocol: Protocol_
    host: str
    port: int | None
    tls: Tls
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        register_login(self.username, self.password)  # never in a log line

    @property
    def effective_port(self) -> int:
        return self.port or _DEFAULT_PORTS[(self.protocol, self.tls == "ssl")]

    @property
    def key(self) -> str:
        """Names the mailbox (not the account): accounts sharing one have one reader."""
        return f"{self.protocol}://{self.username}@{self.host}:{self.effective_port}"


class MailboxError(Exception):
    """`text`: the server's words or the OS/TLS error; `login`: the login was refused."""

    def __init__(self, text: str, *, login: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.login = login


class Session(Protocol):
    def ids(self) -> list[str]: ...
    def fetch(self, message_id: str) -> bytes: ...
    def remove(self, message_id: str) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


def _abort(client: imaplib.IMAP4 | poplib.POP3) -> None:
    """Safe beside a call blocked in another thread: the shutdown makes its recv return at
    once; only then are the client's file and socket closed."""
    sock = getattr(client, "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    for closeable in (getattr(client, "file", None), sock):
        if closeable is not None:
            with contextlib.suppress(OSError, ValueError):
                closeable.close()


class MailboxReader:
    """One session with the mailbox; every call runs in a thread (the clients block)."""

    def __init__(self, mailbox: Mailbox, ssl_context: ssl.SSLContext, timeout_s: float) -> None:
        self._mailbox = mailbox
        self._ssl_context = ssl_context
        self._timeout_s = timeout_s
        self._session: Session | None = None

    async def __aenter__(self) -> "MailboxReader":
        opening = asyncio.ensure_future(self._call(_open, self._mailbox, self._ssl_context,
                                                   self._timeout_s))
        try:
            self._session = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The thread logs in all the same: that session is shut as soon as it exists.
            opening.add_done_callback(
                lambda done: None if done.cancelled() or done.exception() is not None
                else done.result().abort())
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._session is None:
            return
        session, self._session = self._session, None
        if exc_type is not None:
            # Nothing more is said to the server (a thread may still be inside a command):
            # removals not yet done are done by the next session, never lost.
            session.abort()
            return
        # Closing commits the removals (EXPUNGE, QUIT): its failure is said, not hidden.
        try:
            await self._call(session.close)
        except BaseException:
            session.abort()
            raise

    async def ids(self) -> list[str]:
        return await self._call(self._live().ids)

    async def fetch(self, message_id: str) -> bytes:
        return await self._call(self._live().fetch, message_id)

    async def remove(self, message_id: str) -> None:
        await self._call(self._live().remove, message_id)

    def _live(self) -> Session:
        if self._session is None:
            raise MailboxError("the mailbox session is closed")
        return self._session

    async def _call(self, function, *args):  # type: ignore[no-untyped-def]
        try:
            return await asyncio.to_thread(function, *args)
        except MailboxError:
            raise
        except (imaplib.IMAP4.error, poplib.error_proto) as error:
            raise MailboxError(_text(error)) from error
        except TimeoutError as error:
            raise MailboxError(f"timed out after {self._timeout_s:g} s") from error
        except (OSError, EOFError) as error:
            raise MailboxError(f"{type(error).__name__}: {error}") from error


def _ok(status: str, data: object, what: str) -> None:
    if status != "OK":
        raise MailboxError(f"{what}: {status} {_text(imaplib.IMAP4.error(data))}")


def _text(error: Exception) -> str:
    text = error.args[0] if error.args else str(error)
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _open(mailbox: Mailbox, context: ssl.SSLContext, timeout_s: float) -> Session:
    if mailbox.protocol == "imap":
        return _Imap(mailbox, context, timeout_s)
    return _Pop3(mailbox, context, timeout_s)


class _Imap:
    def __init__(self, mailbox: Mailbox, context: ssl.SSLContext, timeout_s: float) -> None:
        host, port = mailbox.host, mailbox.effective_port
        if mailbox.tls == "ssl":
            self._client: imaplib.IMAP4 = imaplib.IMAP4_SSL(host, port, ssl_context=context,
                                                             timeout=timeout_s)
        else:
            self._client = imaplib.IMAP4(host, port, timeout=timeout_s)
        try:
            if mailbox.tls == "starttls":
                if "STARTTLS" not in self._client.capabilities:  # never skipped silently
                    raise MailboxError("the IMAP server does not offer STARTTLS")
                self._client.starttls(ssl_context=context)
            try:
                self._client.login(mailbox.username, mailbox.password)
            except imaplib.IMAP4.error as error:
                raise MailboxError(_text(error), login=True) from error
            status, _ = self._client.select("INBOX")
            if status != "OK":
                raise MailboxError("the IMAP server would not open INBOX")
            validity = self._client.response("UIDVALIDITY")[1]
            self._validity = validity[0].decode() if validity and validity[0] else "0"
            # Asked again: servers name more of them once logged in (Dovecot's UIDPLUS).
            _, listed = self._client.capability()
            self._uidplus = b"UIDPLUS" in b" ".join(listed or []).upper().split()
            self._marked = False
        except BaseException:
            self.abort()
            raise

    def ids(self) -> list[str]:
        # Those marked \Deleted too: a reader killed before their expunge left them so.
        status, data = self._client.uid("SEARCH", None, "ALL")
        _ok(status, data, "UID SEARCH")
        # UIDVALIDITY:UID: a UID means nothing once the server renumbers the mailbox.
        return [f"{self._validity}:{uid.decode()}" for uid in (data[0] or b"").split()]

    def fetch(self, message_id: str) -> bytes:
        uid = self._uid(message_id)
        status, data = self._client.uid("FETCH", uid, "(BODY.PEEK[])")
        _ok(status, data, f"UID FETCH {uid}")
        for item in data or []:
            # The literal after "BODY[] {n}"; a server may send the UID before or after it.
            if isinstance(item, tuple) and b"BODY[]" in item[0]:
                return bytes(item[1])
        raise MailboxError(f"UID FETCH {uid}: the message is gone")

    def remove(self, message_id: str) -> None:
        uid = self._uid(message_id)
        status, data = self._client.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
        _ok(status, data, "UID STORE")
        if self._uidplus:
            status, data = self._client.uid("EXPUNGE", uid)
            _ok(status, data, "UID EXPUNGE")
        else:
            self._marked = True

    def close(self) -> None:
        try:
            if self._marked:
                status, data = self._client.expunge()
                _ok(status, data, "EXPUNGE")
            self._client.logout()
        finally:
            self.abort()

    def abort(self) -> None:
        _abort(self._client)

    def _uid(self, message_id: str) -> str:
        validity, _, uid = message_id.partition(":")
        if validity != self._validity:
            raise MailboxError("the mailbox was renumbered (UIDVALIDITY changed)")
        return uid


class _Pop3:
    def __init__(self, mailbox: Mailbox, context: ssl.SSLContext, timeout_s: float) -> None:
        host, port = mailbox.host, mailbox.effective_port
        if mailbox.tls == "ssl":
            self._client: poplib.POP3 = poplib.POP3_SSL(host, port, context=context,
                                                         timeout=timeout_s)
        else:
            self._client = poplib.POP3(host, port, timeout=timeout_s)
        try:
            if mailbox.tls == "starttls":
                if "STLS" not in self._client.capa():  # never skipped silently
                    raise MailboxError("the POP3 server does not offer STLS")
                self._client.stls(context=context)
            try:
                self._client.user(mailbox.username)
                self._client.pass_(mailbox.password)
            except poplib.error_proto as error:
                raise MailboxError(_text(error), login=True) from error
            self._numbers: dict[str, int] = {}
        except BaseException:
            self.abort()
            raise

    def ids(self) -> list[str]:
        _, lines, _ = self._client.uidl()
        self._numbers = {}
        for line in lines:
            number, _, uidl = line.decode("ascii", "replace").partition(" ")
            self._numbers[uidl] = int(number)
        return list(self._numbers)

    def fetch(self, message_id: str) -> bytes:
        _, lines, _ = self._client.retr(self._number(message_id))
        # poplib strips the CRLFs and undoes the dot-stuffing; the lines are the message.
        return b"\r\n".join(lines) + b"\r\n"

    def remove(self, message_id: str) -> None:
        self._client.dele(self._number(message_id))

    def close(self) -> None:
        try:
            self._client.quit()  # the deletions take effect here, not at DELE
        finally:
            self.abort()

    def abort(self) -> None:
        _abort(self._client)

    def _number(self, message_id: str) -> int:
        if message_id not in self._numbers:
            raise MailboxError(f"no message {message_id} in this session")
        return self._numbers[message_id]
