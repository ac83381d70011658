"""A password never reaches a log line, whatever form it takes on the way: an exception's
traceback through aiosmtplib's AUTH (whose frames hold the login in base64), a JSON string's
escapes, AUTH PLAIN's base64 of NUL user NUL password. A real SMTP server refuses the login."""

import base64
import io
from collections.abc import Iterator

import aiosmtplib
import orjson
import pytest
import structlog

from shared.logging import configure_logging
from shared.smtp import SmtpEndpoint, SmtpSession, SmtpStageError, client_ssl_context
from tests.support.smtp_servers import auth_server

USER = "news@shop.example.com"
# A quote and a backslash: a JSON line writes them escaped, which a plain scrub would miss.
CANARY = 'canary-"quoted"\\-Pa55w0rd-e81c'


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=stream)
    yield stream
    configure_logging(level="info", fmt="json", stream=io.StringIO())


def forms(password: str) -> list[str]:
    return [password, orjson.dumps(password).decode()[1:-1],
            base64.b64encode(password.encode()).decode(),
            base64.b64encode(f"\0{USER}\0{password}".encode()).decode()]


async def test_a_refused_login_traceback_through_aiosmtplib_shows_no_form_of_the_password(
    output: io.StringIO,
) -> None:
    log = structlog.get_logger("test")
    async with auth_server({USER: "the-right-one"}) as server:
        # An unsaved test mail's endpoint: its password was never decrypted from the store.
        endpoint = SmtpEndpoint(host=server.host, port=server.port, tls="none", username=USER,
                                password=CANARY)
        client = aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False,
                                 use_tls=False)
        await client.connect()
        try:
            await client.auth_plain(USER, CANARY)
        except aiosmtplib.SMTPAuthenticationError:
            log.exception("login refused", note=CANARY)
        finally:
            client.close()
        session = SmtpSession(endpoint, ssl_context=client_ssl_context(), timeout_s=5)
        try:
            await session.open()
        except SmtpStageError:
            log.exception("session refused")
        finally:
            await session.close()
    assert server.auth_attempts, "no AUTH reached the server: nothing was tested"

    text = output.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    ours = [line for line in lines if line["logger"] == "test"]
    assert [line["event"] for line in ours] == ["login refused", "session refused"]
    frames = [frame for line in ours for exc in line["exception"] for frame in exc["frames"]]
    assert any(frame["name"] == "auth_plain" for frame in frames)
    assert all("locals" not in frame for frame in frames)
    for form in forms(CANARY):
        assert form not in text
