"""What an SMTP failure means for the recipient and the account, with real servers' words; and
the pacing arithmetic of a throttled account."""

import pytest

from services.sender.delivery.classify import (
    Kind,
    Verdict,
    classify,
    contract_stage,
    decayed_interval_ms,
    retry_delay,
)
from shared.smtp import SmtpStageError


def error(stage, code, text, exception="SMTPResponseException", *, permanent=None,
          after_data=False):
    """An SmtpStageError as SmtpSession builds it: permanent for a 5xx unless told."""
    if permanent is None:
        permanent = code is not None and 500 <= code <= 599
    return SmtpStageError(stage, code, text, exception, permanent=permanent,
                          after_data=after_data)


THROTTLED = [
    # (stage, code, text, expected retry_after_s)
    ("connect", 421, "4.7.0 Try again later, closing connection", None),  # Gmail greeting
    ("connect", 421, "4.3.2 The maximum number of concurrent server connections has exceeded "
                     "a limit, closing transmission channel", None),  # Outlook
    ("connect", 421, "Too many concurrent SMTP connections; please try again later.", None),
    ("rcpt", 452, "4.5.3 Too many recipients", None),
    ("mail", 452, "4.3.1 Insufficient system storage", None),
    ("mail", 451, "4.7.500 Server busy. Please try again later from [192.0.2.1]", None),
    ("data", 421, "4.7.0 Temporary System Problem. Try again in 5 minutes.", 300.0),
    ("auth", 454, "4.7.0 Too many login attempts, please try again later.", None),  # Gmail
    ("mail", 454, "Throttling failure: Maximum sending rate exceeded.", None),  # Amazon SES
    ("rcpt", 554, "5.7.1 Rate limit exceeded, slow down", None),
    ("data", 550, "5.7.1 Message rejected: account is rate-limited, retry after 60 sec", 60.0),
    ("mail", 550, "5.7.1 Ratelimit exceeded for this sender", None),
    ("rcpt", 431, "4.4.5 Sending rate too high", None),
    ("rcpt", 450, "4.7.1 Please wait 2 min before sending more", 120.0),
    ("mail", 450, "4.7.1 Sending paused, retry after 1.5 hours", 5400.0),
]


@pytest.mark.parametrize(("stage", "code", "text", "retry_after_s"), THROTTLED)
def test_throttling_defers_and_slows_the_account(stage, code, text, retry_after_s):
    verdict = classify(error(stage, code, text))
    assert verdict == Verdict(Kind.THROTTLED, contract_stage(stage),
                              retry_after_s=retry_after_s)


@pytest.mark.parametrize("text", [
    "5.1.1 <a@example.com>: generated address rejected",
    "5.1.1 Recipient address rejected: use a separate account",
    "5.1.1 The email account that you tried to reach does not exist. Please try double-checking "
    "the recipient's email address for typos or unnecessary spaces.",
    "5.4.6 Too many hops",  # a mail loop: never going to work
    "5.1.1 User unknown; accurate address required",
])
def test_rate_only_as_a_word(text):
    assert classify(error("rcpt", 550, text)).kind is Kind.PERMANENT


@pytest.mark.parametrize(("stage", "code", "text", "exception", "reason"), [
    ("auth", 535, "5.7.8 Username and Password not accepted. For more information, go to "
                  "https://support.google.com/mail/?p=BadCredentials", "SMTPAuthenticationError",
     "auth"),
    ("auth", 534, "5.7.9 Application-specific password required.", "SMTPAuthenticationError",
     "auth"),
    ("auth", 530, "5.7.0 Authentication Required", "SMTPAuthenticationError", "auth"),
    ("auth", 538, "5.7.11 Encryption required for requested authentication mechanism",
     "SMTPAuthenticationError", "auth"),
    ("auth", 504, "5.7.4 Unrecognized authentication type", "SMTPAuthenticationError", "auth"),
    ("auth", None, "server offered no AUTH mechanism", "SMTPNotSupported", "auth"),
    ("tls", None, "server did not offer STARTTLS", "SMTPNotSupported", "tls"),
    ("tls", None, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
                  "certificate (_ssl.c:1006)", "SSLCertVerificationError", "tls"),
    ("tls", None, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)", "SSLError",
     "tls"),
    ("tls", 502, "5.5.1 Unrecognized command.", "SMTPResponseException", "tls"),
    ("pop", None, "-ERR [AUTH] Invalid login", "error_proto", "pop"),
    ("mail", 553, "5.7.1 <news@example.com>: Sender address rejected: not owned by user "
                  "user@example.com", "SMTPSenderRefused", "sender_refused"),
    ("mail", 550, "5.7.60 SMTP; Client does not have permissions to send as this sender",
     "SMTPSenderRefused", "sender_refused"),
    ("mail", 501, "5.1.7 Bad sender address syntax", "SMTPSenderRefused", "sender_refused"),
    ("mail", 530, "5.7.0 Must issue a STARTTLS command first", "SMTPSenderRefused", "tls"),
    ("mail", 530, "5.7.57 Client not authenticated to send mail", "SMTPSenderRefused", "auth"),
    ("mail", 530, "5.7.0 Authentication required", "SMTPSenderRefused", "auth"),
    ("rcpt", 530, "5.7.1 Authentication required", "SMTPRecipientRefused", "auth"),
    ("connect", 554, "5.7.1 No SMTP service here", "SMTPConnectError", "connect"),
    ("ehlo", 550, "5.7.1 Invalid HELO name", "SMTPHeloError", "connect"),
])
def test_account_faults_pause_the_account(stage, code, text, exception, reason):
    # A refused POP login is the one permanent failure without a reply code.
    verdict = classify(error(stage, code, text, exception, permanent=True if stage == "pop"
                             else None))
    assert verdict == Verdict(Kind.ACCOUNT_FAULT, contract_stage(stage), pause_reason=reason)


@pytest.mark.parametrize(("stage", "text", "exception"), [
    ("resolve", "[Errno -2] Name or service not known", "gaierror"),
    ("connect", "[Errno 111] Connect call failed ('192.0.2.1', 587)", "ConnectionRefusedError"),
    ("connect", "timed out after 10 s", "TimeoutError"),
    ("connect", "[Errno 113] No route to host", "OSError"),
    ("ehlo", "Connection lost", "SMTPServerDisconnected"),
    ("tls", "timed out after 10 s", "TimeoutError"),
    ("tls", "[Errno 104] Connection reset by peer", "ConnectionResetError"),
    ("auth", "Connection lost", "SMTPServerDisconnected"),
    ("pop", "[Errno 111] Connection refused", "ConnectionRefusedError"),
    ("pop", "-ERR [SYS/TEMP] server busy", "error_proto"),  # a refused greeting, not a login
])
def test_unreachable_server_is_transient_and_counts_towards_a_pause(stage, text, exception):
    verdict = classify(error(stage, None, text, exception, permanent=False))
    assert verdict == Verdict(Kind.TRANSIENT, contract_stage(stage), pause_reason="connect")


@pytest.mark.parametrize(("stage", "code", "text", "event_stage"), [
    ("rcpt", 550, "5.1.1 User unknown", "recipient"),
    ("rcpt", 550, "5.1.1 The email account that you tried to reach does not exist.",
     "recipient"),
    ("data", 552, "5.3.4 Message size exceeds fixed limit", "data"),
    ("mail", 552, "5.3.4 Message size exceeds fixed maximum message size", "sender"),  # SIZE=
])
def test_recipient_or_message_refused_fails_the_recipient(stage, code, text, event_stage):
    assert classify(error(stage, code, text)) == Verdict(Kind.PERMANENT, event_stage)


def test_smtputf8_not_offered_fails_the_recipient_not_the_account():
    verdict = classify(error(
        "mail", None, "an address is not ASCII and the server does not offer SMTPUTF8",
        "SMTPNotSupported", permanent=True))
    assert verdict == Verdict(Kind.PERMANENT, "recipient")


@pytest.mark.parametrize(("stage", "code", "text", "exception", "after_data"), [
    ("rcpt", 455, "4.5.4 Server unable to accommodate parameters", "SMTPRecipientRefused", False),
    ("data", 441, "4.4.1 No answer from host", "SMTPDataError", False),
    ("mail", None, "Connection lost", "SMTPServerDisconnected", False),
    ("rcpt", None, "timed out after 10 s", "TimeoutError", False),
    ("data", None, "timed out after 10 s", "TimeoutError", False),  # DATA itself unanswered
    ("auth", 432, "4.7.12 A password transition is needed", "SMTPAuthenticationError", False),
])
def test_temporary_failures_are_retried(stage, code, text, exception, after_data):
    verdict = classify(error(stage, code, text, exception, permanent=False,
                             after_data=after_data))
    assert verdict == Verdict(Kind.TRANSIENT, contract_stage(stage))


@pytest.mark.parametrize(("text", "exception"), [
    ("timed out after 10 s", "TimeoutError"),
    ("Connection lost", "SMTPServerDisconnected"),
])
def test_no_answer_after_the_payload_is_unknown(text, exception):
    verdict = classify(error("data", None, text, exception, permanent=False, after_data=True))
    assert verdict == Verdict(Kind.UNKNOWN, "data")


def test_an_answer_after_the_payload_is_not_ambiguous():
    refused = error("data", 554, "Message rejected", "SMTPDataError", after_data=True)
    assert classify(refused) == Verdict(Kind.PERMANENT, "data")
    busy = error("data", 451, "4.3.0 Error: queue file write error", "SMTPDataError",
                 after_data=True)
    assert classify(busy) == Verdict(Kind.TRANSIENT, "data")


def test_anything_else_permanent_fails_the_recipient():
    verdict = classify(error("rcpt", None, "'ascii' codec can't encode character", "ValueError",
                             permanent=True))
    assert verdict == Verdict(Kind.PERMANENT, "recipient")


@pytest.mark.parametrize(("stage", "expected"), [
    ("resolve", "connect"), ("connect", "connect"), ("ehlo", "connect"), ("tls", "tls"),
    ("pop", "pop"), ("auth", "auth"), ("mail", "sender"), ("rcpt", "recipient"),
    ("data", "data"),
])
def test_contract_stage(stage, expected):
    assert contract_stage(stage) == expected


def test_contract_stage_refuses_an_unknown_stage():
    with pytest.raises(ValueError, match="quit"):
        contract_stage("quit")


@pytest.mark.parametrize(("attempts", "expected"), [
    (1, 60), (2, 300), (3, 1800), (4, 1800), (100, 1800), (0, 60),
])
def test_retry_delay_walks_the_tiers_then_stays_on_the_last(attempts, expected):
    assert retry_delay(attempts, [60, 300, 1800]) == expected


def test_retry_delay_needs_tiers():
    assert retry_delay(5, (30,)) == 30
    with pytest.raises(ValueError, match="tiers"):
        retry_delay(1, [])


@pytest.mark.parametrize(("current", "configured", "successes", "expected"), [
    (8000, 1000, 10, 4500),  # halve the excess
    (8000, 1000, 20, 4500),  # every 10th in a row
    (8000, 1000, 9, 8000),  # not yet
    (8000, 1000, 11, 8000),
    (8000, 1000, 0, 8000),
    (1102, 1000, 10, 1051),
    (1100, 1000, 10, 1000),  # within 50 ms: snap
    (1050, 1000, 10, 1000),
    (1001, 1000, 10, 1000),
    (1000, 1000, 10, 1000),  # nothing to decay
    (500, 1000, 3, 1000),  # never below the configured pause
    (4000, 0, 10, 2000),
    (60, 0, 10, 0),
])
def test_decayed_interval(current, configured, successes, expected):
    assert decayed_interval_ms(current, configured, successes) == expected


def test_decayed_interval_with_another_step():
    assert decayed_interval_ms(8000, 1000, 5, every=5) == 4500
    assert decayed_interval_ms(8000, 1000, 1, every=1) == 4500
    with pytest.raises(ValueError, match="every"):
        decayed_interval_ms(8000, 1000, 10, every=0)
