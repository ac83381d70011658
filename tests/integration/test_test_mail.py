"""The staged test-mail report against real SMTP and POP3 servers on loopback (no mocks)."""

import email
import email.policy

from services.config_svc import testmail
from shared.smtp import PopLogin, SmtpEndpoint, client_ssl_context
from tests.support.certs import Certs, certs_fixture  # noqa: F401
from tests.support.pop3_server import pop3_server
from tests.support.smtp_servers import (
    hidden_starttls_server,
    refusing_rcpt_server,
    smtp_server,
    starttls_server,
)

CANARY = "canary-pw-7f3a9c"  # a password that must never show in a report
USERS = {"news@shop.example": CANARY}


def endpoint(server, tls="none", password=CANARY, **fields) -> SmtpEndpoint:
    return SmtpEndpoint(host=server.host, port=server.port, tls=tls,
                        username="news@shop.example", password=password, **fields)


async def run(point: SmtpEndpoint, certs: Certs, lang="en", to="customer@example.com",
              from_name="Shop News") -> testmail.TestMailReport:
    report = await testmail.run_test_mail(
        point, from_address="news@shop.example", from_name=from_name,
        reply_to="support@shop.example", to=to, lang=lang,
        ssl_context=client_ssl_context(certs.ca_file), timeout_s=5,
    )
    assert CANARY not in report.model_dump_json()
    return report


async def test_a_successful_test_mail_reports_every_stage_and_the_servers_capabilities(certs):
    async with starttls_server(certs, USERS) as server:
        report = await run(endpoint(server, "starttls"), certs)

    assert report.ok
    assert report.message == "Mail was sent"
    assert report.failure is None
    assert [s.stage for s in report.stages] == [
        "resolve", "connect", "tls", "ehlo", "auth", "mail", "rcpt", "data"]
    assert all(s.ok and s.duration_ms >= 0 for s in report.stages)
    assert {"auth", "size", "8bitmime"} <= report.capabilities.keys()
    assert report.auth_mechanisms == ["LOGIN", "PLAIN"]

    [received] = server.messages
    assert (received.mail_from, received.rcpt_tos) == ("news@shop.example",
                                                       ["customer@example.com"])
    mail = email.message_from_bytes(received.data, policy=email.policy.default)
    assert mail["From"] == "Shop News <news@shop.example>"
    assert mail["To"] == "customer@example.com"
    assert mail["Reply-To"] == "support@shop.example"
    assert mail["Subject"] == "Test mail"
    assert mail["Date"].datetime is not None
    assert mail["Message-ID"].endswith("@shop.example>")
    assert "test mail" in mail.get_content()


async def test_a_japanese_test_mail_has_a_japanese_subject_and_sender_name(certs):
    async with smtp_server(users=USERS) as server:
        report = await run(endpoint(server), certs, lang="ja", from_name="ショップ便り")

    assert report.ok
    assert report.message == "メールを送信しました"
    mail = email.message_from_bytes(server.messages[0].data, policy=email.policy.default)
    assert server.messages[0].data.isascii()  # RFC 2047 headers, base64 body: 7-bit clean
    assert mail["Subject"] == "テストメール"
    assert mail["From"].addresses[0].display_name == "ショップ便り"
    assert "テストメール" in mail.get_content()


async def test_a_wrong_password_is_reported_at_auth_with_the_servers_words_and_a_hint(certs):
    async with smtp_server(users=USERS) as server:
        report = await run(endpoint(server, password="not-" + CANARY), certs)

    assert not report.ok
    failure = report.failure
    assert failure is not None
    assert (failure.stage, failure.smtp_code) == ("auth", 535)
    assert failure.smtp_message == "5.7.8 Username and Password not accepted"
    assert failure.exception == "SMTPAuthenticationError"
    assert "smtp_password" in failure.hint and "smtp_username" in failure.hint
    assert report.message == ("Test mail failed at auth: "
                              "535 5.7.8 Username and Password not accepted")
    assert [(s.stage, s.ok) for s in report.stages][-1] == ("auth", False)
    assert "not-" + CANARY not in report.model_dump_json()


async def test_the_hint_for_a_wrong_password_is_in_japanese_when_asked(certs):
    async with smtp_server(users=USERS) as server:
        report = await run(endpoint(server, password="wrong"), certs, lang="ja")

    assert report.failure is not None
    assert report.failure.smtp_message == "5.7.8 Username and Password not accepted"
    assert "SMTPパスワード(smtp_password)" in report.failure.hint
    assert report.message.startswith("テストメールの送信に失敗しました")


async def test_a_server_without_starttls_is_reported_at_tls_before_any_password(certs):
    async with hidden_starttls_server(USERS) as server:
        report = await run(endpoint(server, "starttls"), certs)

    failure = report.failure
    assert failure is not None
    assert (failure.stage, failure.smtp_code) == ("tls", None)
    assert failure.smtp_message == "server did not offer STARTTLS"
    assert "tls" in failure.hint and "ssl" in failure.hint and "smtp_port" in failure.hint
    assert "starttls" not in report.capabilities  # what the server said before we gave up
    assert server.auth_attempts == []


async def test_a_refused_recipient_is_reported_at_rcpt_with_a_hint_about_the_address(certs):
    async with refusing_rcpt_server(frozenset({"customer@example.com"}), users=USERS) as server:
        report = await run(endpoint(server), certs)

    failure = report.failure
    assert failure is not None
    assert (failure.stage, failure.smtp_code) == ("rcpt", 550)
    assert failure.smtp_message == "5.1.1 User unknown"
    assert "`to`" in failure.hint
    assert server.messages == []


async def test_a_refused_pop_login_is_reported_at_pop_with_a_hint_in_both_languages(certs):
    async with pop3_server("pop-user", "pop-password") as pop, smtp_server(users=USERS) as server:
        pop_login = PopLogin(pop.host, pop.port, "pop-user", CANARY)
        reports = [await run(endpoint(server, pop=pop_login), certs, lang=lang)
                   for lang in ("en", "ja")]

    english, japanese = (r.failure for r in reports)
    assert english is not None and japanese is not None
    assert (english.stage, english.smtp_code) == ("pop", None)
    assert english.smtp_message == "-ERR [AUTH] invalid password"
    assert "pop_password" in english.hint and "pop_username" in english.hint
    assert "POPパスワード(pop_password)" in japanese.hint
    assert server.connections == 0


async def test_a_test_mail_to_an_international_address_travels_with_smtputf8(certs):
    async with smtp_server(users=USERS, smtputf8=True) as server:
        report = await run(endpoint(server), certs, to="山田@example.jp")

    assert report.ok
    [received] = server.messages
    assert received.rcpt_tos == ["山田@example.jp"]
    assert "SMTPUTF8" in received.mail_options
    assert "To: 山田@example.jp\r\n".encode() in received.data
