"""SmtpSession against real SMTP and POP3 servers on loopback (tests/support), no mocks."""

import time

import pytest

from shared.smtp import (
    PopLogin,
    SmtpEndpoint,
    SmtpSession,
    SmtpStageError,
    StageResult,
    Withdrawn,
    client_ssl_context,
)
from tests.support.certs import Certs, certs_fixture  # noqa: F401
from tests.support.pop3_server import INVALID_PASSWORD, pop3_server
from tests.support.smtp_servers import (
    auth_server,
    closed_port,
    dropping_after_data_server,
    hidden_starttls_server,
    implicit_tls_server,
    refusing_rcpt_server,
    silent_server,
    smtp_server,
    starttls_server,
)

USERS = {"news@shop.example": "right-password"}
SENDER = "news@shop.example"
MESSAGE = (b"From: news@shop.example\r\nTo: a@example.com\r\nSubject: hello\r\n\r\n"
           b"Hello.\r\n.A line starting with a dot survives.\r\n")


def endpoint(server, tls="none", **fields) -> SmtpEndpoint:
    return SmtpEndpoint(host=server.host, port=server.port, tls=tls, **fields)


def login(password: str = "right-password") -> dict[str, str]:
    return {"username": "news@shop.example", "password": password}


def session(point: SmtpEndpoint, certs: Certs, **options) -> SmtpSession:
    return SmtpSession(point, ssl_context=client_ssl_context(certs.ca_file), **options)


async def send_expecting_failure(sess: SmtpSession, recipient: str = "a@example.com",
                                 sender: str = SENDER) -> SmtpStageError:
    with pytest.raises(SmtpStageError) as caught:
        await sess.send(sender, recipient, MESSAGE)
    return caught.value


@pytest.mark.parametrize("tls", ["none", "starttls", "ssl"])
async def test_a_message_sent_over_each_tls_mode_arrives_with_its_envelope(certs, tls):
    profile = {"none": smtp_server(users=USERS), "starttls": starttls_server(certs, USERS),
               "ssl": implicit_tls_server(certs, USERS)}[tls]
    stages: list[StageResult] = []
    async with profile as server:
        sess = session(endpoint(server, tls, **login()), certs, on_stage=stages.append)
        code, text = await sess.send(SENDER, "a@example.com", MESSAGE)
        await sess.close()

    assert (code, text) == (250, "2.0.0 OK queued")
    [received] = server.messages
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["a@example.com"]
    assert received.data == MESSAGE
    assert server.logins == [SENDER]
    assert [s.stage for s in stages] == [
        "resolve", "connect", *(["tls"] if tls != "none" else []), "ehlo", "auth",
        "mail", "rcpt", "data"]
    assert all(s.ok for s in stages)
    if tls != "none":
        assert "TLSv1." in next(s.detail for s in stages if s.stage == "tls")


async def test_three_messages_share_one_connection(certs):
    async with auth_server(USERS) as server:
        sess = session(endpoint(server, **login()), certs)
        for n in range(3):
            await sess.send(SENDER, f"r{n}@example.com", MESSAGE)
        assert sess.is_open
        await sess.close()
        assert not sess.is_open

    assert server.connections == 1
    assert [m.rcpt_tos for m in server.messages] == [["r0@example.com"], ["r1@example.com"],
                                                     ["r2@example.com"]]


async def test_a_message_withdrawn_before_data_never_arrives_and_the_session_goes_on(certs):
    async with auth_server(USERS) as server:
        sess = session(endpoint(server, **login()), certs)
        checked = []

        async def no() -> bool:
            checked.append(server.connections)  # asked once the envelope was accepted
            return False

        with pytest.raises(Withdrawn):
            await sess.send(SENDER, "r0@example.com", MESSAGE, before_data=no)

        async def broken() -> bool:
            raise RuntimeError("the database is gone")

        with pytest.raises(RuntimeError):
            await sess.send(SENDER, "r1@example.com", MESSAGE, before_data=broken)
        await sess.send(SENDER, "r2@example.com", MESSAGE, before_data=lambda: _yes())
        await sess.close()

    assert checked == [1]
    assert server.connections == 1
    assert [m.rcpt_tos for m in server.messages] == [["r2@example.com"]]


async def _yes() -> bool:
    return True


async def test_the_session_reconnects_after_the_server_dropped_the_connection(certs):
    async with auth_server(USERS) as server:
        sess = session(endpoint(server, **login()), certs)
        await sess.send(SENDER, "first@example.com", MESSAGE)
        await server.drop_connections()

        await sess.send(SENDER, "second@example.com", MESSAGE)
        await sess.close()

    assert server.connections == 2
    assert [m.connection for m in server.messages] == [1, 2]


async def test_a_wrong_password_fails_at_auth_with_the_servers_words_verbatim(certs):
    async with auth_server(USERS) as server:
        sess = session(endpoint(server, **login("wrong-password-canary")), certs)
        error = await send_expecting_failure(sess)

    assert error.stage == "auth"
    assert error.code == 535
    assert error.text == "5.7.8 Username and Password not accepted"
    assert error.exception == "SMTPAuthenticationError"
    assert error.permanent
    assert str(error) == "auth failed: 535 5.7.8 Username and Password not accepted"
    assert "wrong-password-canary" not in repr(error) + repr(sess.endpoint) + repr(sess)
    assert not sess.is_open
    assert server.messages == []


async def test_a_server_hiding_starttls_fails_at_tls_and_never_sees_the_password(certs):
    async with hidden_starttls_server(USERS) as server:
        sess = session(endpoint(server, "starttls", **login()), certs)
        error = await send_expecting_failure(sess)

    assert error.stage == "tls"
    assert error.text == "server did not offer STARTTLS"
    assert not error.permanent
    assert server.auth_attempts == []
    assert server.logins == []


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
async def test_a_certificate_from_an_untrusted_authority_fails_at_tls(certs, tls):
    profile = starttls_server(certs, USERS) if tls == "starttls" else implicit_tls_server(certs,
                                                                                          USERS)
    async with profile as server:
        sess = SmtpSession(endpoint(server, tls, **login()), ssl_context=client_ssl_context())
        error = await send_expecting_failure(sess)

    assert error.stage == "tls"
    assert error.exception == "SSLCertVerificationError"
    assert "CERTIFICATE_VERIFY_FAILED" in error.text
    assert server.auth_attempts == []


async def test_a_closed_port_fails_at_connect(certs):
    sess = session(SmtpEndpoint("127.0.0.1", closed_port(), "none"), certs)
    error = await send_expecting_failure(sess)

    assert error.stage == "connect"
    assert error.exception == "ConnectionRefusedError"
    assert not error.permanent


async def test_an_unknown_host_fails_at_resolve(certs):
    sess = session(SmtpEndpoint("no-such-host.invalid", 587, "starttls"), certs)
    error = await send_expecting_failure(sess)

    assert error.stage == "resolve"
    assert error.exception == "gaierror"
    assert not error.permanent


async def test_a_refused_recipient_fails_at_rcpt_and_the_session_serves_the_next_one(certs):
    async with refusing_rcpt_server(frozenset({"nobody@example.com"})) as server:
        sess = session(endpoint(server), certs)
        error = await send_expecting_failure(sess, "nobody@example.com")
        assert sess.is_open
        await sess.send(SENDER, "somebody@example.com", MESSAGE)
        await sess.close()

    assert (error.stage, error.code, error.text) == ("rcpt", 550, "5.1.1 User unknown")
    assert error.permanent
    assert server.connections == 1
    assert [m.rcpt_tos for m in server.messages] == [["somebody@example.com"]]


async def test_a_server_that_never_greets_times_out_at_connect(certs):
    with silent_server() as port:
        sess = session(SmtpEndpoint("127.0.0.1", port, "none"), certs, timeout_s=0.5)
        started = time.monotonic()
        error = await send_expecting_failure(sess)

    assert time.monotonic() - started < 3
    assert (error.stage, error.code, error.exception) == ("connect", None, "TimeoutError")
    assert error.text == "timed out after 0.5 s"
    assert not error.permanent


async def test_starttls_on_an_implicit_tls_port_times_out_waiting_for_the_greeting(certs):
    async with implicit_tls_server(certs, USERS) as server:
        sess = session(endpoint(server, "starttls", **login()), certs, timeout_s=0.5)
        error = await send_expecting_failure(sess)

    assert (error.stage, error.exception) == ("connect", "TimeoutError")


async def test_implicit_tls_on_a_plain_port_fails_at_tls(certs):
    async with auth_server(USERS) as server:
        sess = session(endpoint(server, "ssl", **login()), certs)
        error = await send_expecting_failure(sess)

    assert error.stage == "tls"
    assert error.code is None
    assert server.auth_attempts == []


async def test_an_international_address_needs_smtputf8_and_fails_at_mail_without_it(certs):
    async with smtp_server() as server:
        sess = session(endpoint(server), certs)
        error = await send_expecting_failure(sess, "山田@example.jp")
        assert sess.is_open
        await sess.send(SENDER, "ascii@example.com", MESSAGE)
        await sess.close()

    assert (error.stage, error.code, error.exception) == ("mail", None, "SMTPNotSupported")
    assert error.permanent
    assert [m.rcpt_tos for m in server.messages] == [["ascii@example.com"]]


async def test_an_international_address_is_sent_with_smtputf8_when_offered(certs):
    async with smtp_server(smtputf8=True) as server:
        sess = session(endpoint(server), certs)
        await sess.send("送信@example.jp", "山田@example.jp", MESSAGE)
        await sess.close()

    [received] = server.messages
    assert (received.mail_from, received.rcpt_tos) == ("送信@example.jp", ["山田@example.jp"])
    assert "SMTPUTF8" in received.mail_options


async def test_the_local_hostname_is_the_name_given_in_ehlo(certs):
    async with smtp_server() as server:
        sess = session(endpoint(server, local_hostname="mailer.shop.example"), certs)
        await sess.send(SENDER, "a@example.com", MESSAGE)
        await sess.close()

    assert server.ehlo_names == ["mailer.shop.example"]


async def test_a_connection_lost_after_the_payload_is_reported_as_ambiguous(certs):
    async with dropping_after_data_server() as server:
        sess = session(endpoint(server), certs)
        error = await send_expecting_failure(sess)

        assert error.stage == "data"
        assert error.after_data and error.ambiguous and sess.data_sent
        assert not error.permanent
        assert not sess.is_open
        await server.wait_until(lambda: len(server.messages) == 1)


async def test_pop_before_smtp_logs_in_first_and_not_again_within_its_max_age(certs):
    stages: list[StageResult] = []
    async with pop3_server("pop-user", "pop-password") as pop, smtp_server() as server:
        pop_login = PopLogin(pop.host, pop.port, "pop-user", "pop-password")
        sess = session(endpoint(server, pop=pop_login), certs, on_stage=stages.append)
        await sess.send(SENDER, "a@example.com", MESSAGE)
        await sess.close()
        await sess.send(SENDER, "b@example.com", MESSAGE)
        await sess.close()

    assert len(pop.logins) == 1
    assert [s.stage for s in stages][:2] == ["pop", "resolve"]
    assert len(server.messages) == 2


async def test_pop_before_smtp_logs_in_again_once_the_last_login_is_too_old(certs):
    async with pop3_server("pop-user", "pop-password", tls="starttls", certs=certs) as pop, \
            smtp_server() as server:
        pop_login = PopLogin(pop.host, pop.port, "pop-user", "pop-password")
        sess = session(endpoint(server, "none", pop=pop_login), certs, pop_max_age_s=0)
        await sess.send(SENDER, "a@example.com", MESSAGE)
        await sess.send(SENDER, "b@example.com", MESSAGE)
        await sess.close()

    assert len(pop.logins) == 2
    assert server.connections == 1


async def test_a_refused_pop_login_fails_at_pop_before_any_smtp(certs):
    async with pop3_server("pop-user", "pop-password") as pop, smtp_server() as server:
        pop_login = PopLogin(pop.host, pop.port, "pop-user", "pop-canary-password")
        sess = session(endpoint(server, pop=pop_login), certs)
        error = await send_expecting_failure(sess)

    assert (error.stage, error.code) == ("pop", None)
    assert error.text == INVALID_PASSWORD
    assert error.exception == "error_proto"
    assert error.permanent
    assert "pop-canary-password" not in str(error) + repr(sess.endpoint)
    assert server.connections == 0


async def test_a_pop_port_where_an_smtp_server_answers_fails_at_pop_as_not_permanent(certs):
    async with smtp_server() as wrong_port, smtp_server() as server:
        pop_login = PopLogin(wrong_port.host, wrong_port.port, "pop-user", "pop-password")
        sess = session(endpoint(server, pop=pop_login), certs)
        error = await send_expecting_failure(sess)

    assert (error.stage, error.exception) == ("pop", "error_proto")
    assert error.text.startswith("220 ")
    assert not error.permanent
    assert server.connections == 0


async def test_closing_a_session_whose_server_is_gone_does_not_raise(certs):
    async with auth_server(USERS) as server:
        sess = session(endpoint(server, **login()), certs)
        await sess.open()
    await sess.close()
    await sess.close()
    assert not sess.is_open
