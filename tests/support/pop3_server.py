"""A small POP3 server on 127.0.0.1 for POP-before-SMTP tests.

It knows one user and one password, answers USER, PASS, CAPA, STAT, QUIT (and STLS when
started with tls="starttls"), refuses a wrong login with `-ERR [AUTH] invalid password`, and
records when each login succeeded (time.monotonic()).

    async with pop3_server("pop-user", "pop-pw") as pop:
        ...
        await pop.wait_until(lambda: len(pop.logins) == 1)
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Literal

from tests.support.certs import Certs
from tests.support.smtp_servers import HOST, Observable

INVALID_PASSWORD = "-ERR [AUTH] invalid password"


class Pop3TestServer(Observable):
    def __init__(self, username: str, password: str, *,
                 tls: Literal["none", "starttls", "ssl"] = "none",
                 certs: Certs | None = None) -> None:
        super().__init__()
        if tls != "none" and certs is None:
            raise ValueError(f"tls={tls} needs certs")
        self.username = username
        self.password = password
        self.tls = tls
        self.certs = certs
        self.host = HOST
        self.port = 0
        self.logins: list[float] = []  # time.monotonic() of each successful login
        self.refused = 0  # logins refused
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        implicit = self.certs.server_context() if self.tls == "ssl" and self.certs else None
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=implicit)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # Close rather than cancel: Python 3.11's asyncio logs an error for a cancelled
        # client_connected_cb task. A closed connection ends each session's read loop.
        for writer in self._sessions.values():
            writer.close()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = asyncio.current_task()
        assert session is not None
        self._sessions[session] = writer
        try:
            await self._converse(reader, writer)
        except ConnectionError:
            pass  # the client went away: nothing to answer
        finally:
            writer.close()
            with suppress(ConnectionError, OSError):
                await writer.wait_closed()
            self._sessions.pop(session, None)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def say(*lines: str) -> None:
            writer.write("".join(line + "\r\n" for line in lines).encode())
            await writer.drain()

        await say("+OK test POP3 server ready")
        user: str | None = None
        logged_in = False
        encrypted = self.tls == "ssl"
        while line := await reader.readline():
            command, _, argument = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
            command = command.upper()
            if command == "CAPA":
                stls = ["STLS"] if self.tls == "starttls" and not encrypted else []
                await say("+OK capability list follows", "USER", *stls, ".")
            elif command == "STLS" and self.tls == "starttls" and not encrypted:
                assert self.certs is not None
                await say("+OK begin TLS negotiation")
                await writer.start_tls(self.certs.server_context())
                encrypted = True
            elif command == "USER":
                user = argument
                await say("+OK send PASS")
            elif command == "PASS":
                logged_in = user == self.username and argument == self.password
                if logged_in:
                    self.logins.append(time.monotonic())
                    await say("+OK logged in")
                else:
                    self.refused += 1
                    await say(INVALID_PASSWORD)
                self.changed()
            elif command == "STAT" and logged_in:
                await say("+OK 0 0")
            elif command == "QUIT":
                await say("+OK bye")
                return
            else:
                await say(f"-ERR {command or 'empty line'} not understood here")


@asynccontextmanager
async def pop3_server(username: str, password: str, *,
                      tls: Literal["none", "starttls", "ssl"] = "none",
                      certs: Certs | None = None) -> AsyncIterator[Pop3TestServer]:
    server = Pop3TestServer(username, password, tls=tls, certs=certs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
