"""Each failure of a test mail earns a hint naming the setting likely wrong, in English and
Japanese (the Japanese from the screens' catalog); and the report's language follows the
Accept-Language header."""

import re

import pytest

from services.config_svc import testmail
from services.config_svc.hints import _HINTS, diagnose, hint
from services.config_svc.i18n import CATALOGS, pick_language
from shared.smtp import PopLogin, SmtpEndpoint

STARTTLS_587 = SmtpEndpoint("smtp.example.com", 587, "starttls", username="u", password="p")
PLAIN_25 = SmtpEndpoint("smtp.example.com", 25, "none", username="u", password="p")
NO_LOGIN = SmtpEndpoint("smtp.example.com", 587, "starttls")
WITH_POP = SmtpEndpoint("smtp.example.com", 587, "starttls",
                        pop=PopLogin("pop.example.com", 110, "u", "p"))
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")

CASES = [
    # (stage, code, server's text, exception, endpoint, expected hint, settings it names)
    ("auth", 535, "5.7.8 Username and Password not accepted", "SMTPAuthenticationError",
     STARTTLS_587, "login_refused", ["smtp_username", "smtp_password"]),
    ("resolve", None, "[Errno -2] Name or service not known", "gaierror",
     STARTTLS_587, "unknown_host", ["smtp_host", "smtp.example.com"]),
    ("connect", None, "[Errno 111] Connect call failed ('192.0.2.1', 587)",
     "ConnectionRefusedError", STARTTLS_587, "refused", ["smtp_port"]),
    ("connect", None, "timed out after 10 s", "TimeoutError",
     STARTTLS_587, "timeout", ["smtp_host", "smtp_port", "587"]),
    ("mail", 530, "5.7.0 Must issue a STARTTLS command first", "SMTPSenderRefused",
     PLAIN_25, "tls_required", ["tls", "starttls", "ssl"]),
    ("auth", None, "server offered no AUTH mechanism", "SMTPNotSupported",
     PLAIN_25, "auth_not_offered_plain", ["tls", "smtp_auth"]),
    ("tls", None, "server did not offer STARTTLS", "SMTPNotSupported",
     STARTTLS_587, "starttls_not_offered", ["tls", "ssl", "smtp_port"]),
    ("tls", None, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname "
     "mismatch, certificate is not valid for 'smtp.example.com'. (_ssl.c:1006)",
     "SSLCertVerificationError", STARTTLS_587, "certificate", ["smtp_host"]),
    ("tls", None, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)",
     "SSLError", SmtpEndpoint("smtp.example.com", 587, "ssl"), "plain_port_with_ssl",
     ["tls", "starttls", "smtp_port"]),
    ("connect", None, "timed out after 10 s", "TimeoutError",
     SmtpEndpoint("smtp.example.com", 465, "starttls"), "implicit_tls_port", ["tls", "ssl"]),
    ("connect", None, "timed out after 10 s", "TimeoutError",
     SmtpEndpoint("smtp.example.com", 465, "ssl"), "timeout_ssl", ["smtp_host", "smtp_port"]),
    ("mail", 553, "5.7.1 Sender address rejected: not owned by user", "SMTPSenderRefused",
     STARTTLS_587, "sender_refused", ["from_address"]),
    ("mail", 530, "5.7.0 Authentication required", "SMTPSenderRefused",
     NO_LOGIN, "auth_required", ["smtp_auth", "smtp_username", "smtp_password"]),
    ("mail", None, "an address is not ASCII and the server does not offer SMTPUTF8",
     "SMTPNotSupported", STARTTLS_587, "smtputf8", ["from_address"]),
    ("rcpt", 550, "5.1.1 User unknown", "SMTPRecipientRefused",
     STARTTLS_587, "recipient_refused", ["to"]),
    ("rcpt", 554, "5.7.1 <a@example.com>: Relay access denied", "SMTPRecipientRefused",
     NO_LOGIN, "relay_denied", ["smtp_auth"]),
    ("rcpt", 450, "4.2.0 Greylisted, try again later", "SMTPRecipientRefused",
     STARTTLS_587, "temporary", []),
    ("pop", None, "-ERR [AUTH] invalid password", "error_proto",
     WITH_POP, "pop_login", ["pop_username", "pop_password"]),
    ("pop", None, "[Errno 111] Connection refused", "ConnectionRefusedError",
     WITH_POP, "pop_unreachable", ["pop_host", "pop_port", "pop.example.com"]),
    ("pop", None, "220 smtp.example.com ESMTP ready", "error_proto",
     WITH_POP, "pop_unreachable", ["pop_port"]),
    ("pop", None, "-ERR STLS not supported by server", "error_proto",
     WITH_POP, "pop_stls", ["pop_port", "tls"]),
    ("ehlo", 501, "5.5.4 Invalid domain name", "SMTPHeloError",
     STARTTLS_587, "ehlo_refused", ["local_hostname"]),
    ("ehlo", None, "'ascii' codec can't encode characters", "UnicodeEncodeError",
     STARTTLS_587, "local_hostname", ["local_hostname"]),
    ("data", None, "Connection lost", "SMTPServerDisconnected",
     STARTTLS_587, "connection_lost", []),
]


@pytest.mark.parametrize(("stage", "code", "text", "exception", "endpoint", "key", "names"),
                         CASES, ids=[case[5] for case in CASES])
def test_each_failure_gets_the_hint_naming_the_setting_likely_wrong(
        stage, code, text, exception, endpoint, key, names):
    assert diagnose(stage, code, text, exception, endpoint) == key
    english = hint(stage, code, text, exception, endpoint, "en")
    japanese = hint(stage, code, text, exception, endpoint, "ja")
    for name in names:
        assert name in english
        assert name in japanese
    assert not JAPANESE.search(english)
    assert JAPANESE.search(japanese)


def test_every_hint_is_written_in_both_languages_and_every_case_is_tested():
    assert {case[5] for case in CASES} | {"pop_certificate", "connect_other", "tls_failed",
                                         "login_temporary", "auth_not_offered",
                                         "auth_mechanism", "data_refused", "unknown"} \
        == set(_HINTS)
    for english in _HINTS.values():
        assert JAPANESE.search(CATALOGS["ja"].get(english, "")), english


PLACEHOLDER = re.compile(r"\{(\w*)\}")


@pytest.mark.parametrize("english", [*_HINTS.values(), testmail._SENT, testmail._FAILED,
                                     testmail._SUBJECT, testmail._BODY])
def test_the_japanese_keeps_the_placeholders_that_are_filled_in_after_the_translation(english):
    japanese = CATALOGS["ja"][english]
    assert sorted(PLACEHOLDER.findall(japanese)) == sorted(PLACEHOLDER.findall(english))


def test_a_login_refused_hint_reads_like_the_seeds_advice():
    text = hint("auth", 535, "5.7.8 Username and Password not accepted",
                "SMTPAuthenticationError", STARTTLS_587, "en")
    assert text.startswith("The server refused the login: check smtp_username and smtp_password")


@pytest.mark.parametrize(("header", "language"), [
    (None, "en"),
    ("", "en"),
    ("ja", "ja"),
    ("ja-JP,ja;q=0.9,en-US;q=0.8,en;q=0.7", "ja"),
    ("en-US,en;q=0.9,ja;q=0.8", "en"),
    ("en;q=0.5, ja;q=0.8", "ja"),
    ("fr-FR, ja;q=0.3", "ja"),
    ("fr-FR, de", "en"),
    ("*", "en"),
    ("ja;q=0", "en"),
    ("JA-jp", "ja"),
    ("ja;q=oops, en", "en"),
])
def test_japanese_is_chosen_only_when_the_header_prefers_it_over_english(header, language):
    assert pick_language(header) == language
