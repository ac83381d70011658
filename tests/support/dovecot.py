"""The test stack's Dovecot (deploy/local/stack.py): a mailbox of its own per test (any user
name logs in with the stack's password), filled the way an MTA's delivery fills it."""

import asyncio
import imaplib
import ssl
import uuid
from dataclasses import dataclass

from services.sender.bounces.mailbox import Mailbox
from tests.conftest import required_env

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Dovecot:
    imap: int
    imaps: int
    pop3: int
    pop3s: int
    password: str
    ca_file: str

    @classmethod
    def from_env(cls) -> "Dovecot":
        return cls(*(int(required_env(f"MAIL_DOVECOT_{name}_PORT"))
                     for name in ("IMAP", "IMAPS", "POP3", "POP3S")),
                   password=required_env("MAIL_DOVECOT_PASSWORD"),
                   ca_file=required_env("MAIL_DOVECOT_CA_FILE"))

    @staticmethod
    def new_user() -> str:
        return f"bounces-{uuid.uuid4().hex[:10]}"

    def port(self, protocol: str, tls: str) -> int:
        implicit = tls == "ssl"
        if protocol == "imap":
            return self.imaps if implicit else self.imap
        return self.pop3s if implicit else self.pop3

    def mailbox(self, user: str, protocol: str = "imap", tls: str = "starttls",
                password: str | None = None) -> Mailbox:
        return Mailbox(protocol=protocol, host=HOST, port=self.port(protocol, tls), tls=tls,
                       username=user, password=password or self.password)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    async def deliver(self, user: str, *messages: bytes) -> None:
        """Into the user's INBOX, as a local delivery does (IMAP APPEND)."""
        await asyncio.to_thread(self._append, user, messages)

    async def count(self, user: str) -> int:
        """Messages in the INBOX, those marked deleted and not yet expunged left out."""
        return await asyncio.to_thread(self._count, user)

    def _client(self, user: str) -> imaplib.IMAP4:
        client = imaplib.IMAP4(HOST, self.imap, timeout=10)
        client.starttls(ssl_context=self.ssl_context())
        client.login(user, self.password)
        return client

    def _append(self, user: str, messages: tuple[bytes, ...]) -> None:
        client = self._client(user)
        try:
            for raw in messages:
                status, data = client.append("INBOX", None, None, raw.replace(b"\r\n", b"\n")
                                             .replace(b"\n", b"\r\n"))
                assert status == "OK", data
        finally:
            client.logout()

    def _count(self, user: str) -> int:
        client = self._client(user)
        try:
            client.select("INBOX", readonly=True)
            _, data = client.uid("SEARCH", None, "UNDELETED")
            return len((data[0] or b"").split())
        finally:
            client.logout()

    async def mark_deleted(self, user: str) -> None:
        """What a person's mail program does before it expunges: every message \\Deleted."""
        await asyncio.to_thread(self._mark_deleted, user)

    async def count_all(self, user: str) -> int:
        """Every message still in the INBOX, those marked deleted too."""
        return await asyncio.to_thread(self._count_all, user)

    def _mark_deleted(self, user: str) -> None:
        client = self._client(user)
        try:
            client.select("INBOX")
            status, data = client.store("1:*", "+FLAGS", r"(\Deleted)")
            assert status == "OK", data
        finally:
            client.logout()

    def _count_all(self, user: str) -> int:
        client = self._client(user)
        try:
            client.select("INBOX", readonly=True)
            _, data = client.uid("SEARCH", None, "ALL")
            return len((data[0] or b"").split())
        finally:
            client.logout()
