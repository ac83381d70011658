"""What providers really answer, and what the sender makes of it: one row per reply, the
same rows as the table in docs/provider-replies.md."""

import pytest

from services.sender.delivery.classify import Kind, classify
from shared.smtp import SmtpStageError

Q, T, X, A, P = Kind.QUOTA, Kind.TRANSIENT, Kind.THROTTLED, Kind.ACCOUNT_FAULT, Kind.PERMANENT

# (provider, stage, code, reply text, kind, pause reason, quota window, named wait)
REPLIES = [
    ("Gmail", "data", 550, "5.4.5 Daily user sending quota exceeded. Learn more at "
     "https://support.google.com/a/answer/166852", Q, "quota", "day", None),
    ("Google Workspace SMTP relay", "mail", 550, "5.4.5 Daily SMTP relay limit exceeded for "
     "user. For more information on SMTP relay sending limits please contact your "
     "administrator", Q, "quota", "day", None),
    ("Gmail", "auth", 535, "5.7.8 Username and Password not accepted. For more information, "
     "go to https://support.google.com/mail/?p=BadCredentials", A, "auth", None, None),
    ("Gmail", "rcpt", 450, "4.2.1 The user you are trying to contact is receiving mail at a "
     "rate that prevents additional messages from being delivered. Please resend your message "
     "at a later time.", T, None, None, None),
    ("Gmail", "rcpt", 452, "4.2.2 The recipient's inbox is out of storage space. Please "
     "direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp", T, None,
     None, None),
    ("Gmail", "rcpt", 550, "5.1.1 The email account that you tried to reach does not exist.",
     P, None, None, None),
    ("Gmail", "connect", 421, "4.7.0 Try again later, closing connection.", X, None, None,
     None),
    ("Gmail", "data", 550, "5.7.26 This mail is unauthenticated, which poses a security risk "
     "to the sender and Gmail users, and has been blocked.", A, "account", None, None),
    ("Microsoft 365", "data", 554, "5.2.0 STOREDRV.Submission.Exception:"
     "SubmissionQuotaExceededException; Failed to process message due to a permanent "
     "exception with message Cannot submit message.", Q, "quota", None, None),
    ("Microsoft 365", "auth", 535, "5.7.139 Authentication unsuccessful, "
     "SmtpClientAuthentication is disabled for the Tenant.", A, "auth", None, None),
    ("Microsoft 365", "mail", 554, "5.2.252 SendAsDenied; news@shop.example.com not allowed "
     "to send as other@shop.example.com", A, "sender_refused", None, None),
    ("Microsoft 365", "rcpt", 550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not "
     "found by SMTP address lookup", P, None, None, None),
    ("Microsoft 365", "connect", 421, "4.3.2 The maximum number of concurrent server "
     "connections has exceeded a limit, closing transmission channel", X, None, None, None),
    ("Amazon SES", "data", 454, "Throttling failure: Maximum sending rate exceeded.", X, None,
     None, None),
    ("Amazon SES", "data", 554, "Message rejected: Sending quota exceeded.", Q, "quota", None,
     None),
    ("Amazon SES", "data", 554, "Message rejected: Email address is not verified. The "
     "following identities failed the check in region US-EAST-1: news@shop.example.com", A,
     "sender_refused", None, None),
    ("SendGrid", "auth", 535, "Authentication failed: Bad username / password", A, "auth",
     None, None),
    ("SendGrid", "mail", 451, "Authentication failed: Maximum credits exceeded", Q, "quota",
     None, None),
    ("SendGrid", "data", 550, "The from address does not match a verified Sender Identity. "
     "Mail cannot be sent until this error is resolved.", A, "sender_refused", None, None),
    ("Mailgun", "rcpt", 550, "5.7.1 Relaying denied", A, "account", None, None),
    ("Yahoo", "connect", 421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due "
     "to unexpected volume or user complaints - 4.16.55.1; see "
     "https://senders.yahooinc.com/error-codes", X, None, None, None),
    ("Yahoo", "rcpt", 554, "5.7.9 Message not accepted for policy reasons. See "
     "https://senders.yahooinc.com/error-codes", A, "account", None, None),
    ("Postfix (postgrey)", "rcpt", 450, "4.2.0 <a@example.com>: Recipient address rejected: "
     "Greylisted, see http://postgrey.schweikert.ch/help/example.com.html", T, None, None,
     None),
    ("Postfix", "rcpt", 451, "4.7.1 <a@example.com>: Greylisted, please try again in 300 "
     "seconds", T, None, None, 300.0),
    ("Postfix", "rcpt", 550, "5.1.1 <a@example.com>: Recipient address rejected: User unknown "
     "in virtual mailbox table", P, None, None, None),
    ("Postfix", "rcpt", 552, "5.2.2 <a@example.com>: Recipient address rejected: Mailbox "
     "full", T, None, None, None),
    ("Postfix", "rcpt", 554, "5.7.1 <a@example.com>: Relay access denied", A, "account", None,
     None),
    ("Postfix", "mail", 452, "4.3.1 Insufficient system storage", X, None, None, None),
    ("Postfix", "data", 451, "4.3.0 Error: queue file write error", T, None, None, None),
    ("Exim", "rcpt", 550, "Unrouteable address", P, None, None, None),
    ("Exim", "mail", 451, "Temporary local problem - please try later", X, None, None, None),
    ("Exim", "rcpt", 451, "4.7.1 Rate limit exceeded. Try again in 1 hour", X, None, None,
     3600.0),
    ("Japanese hosting (reported wording)", "mail", 550, "5.7.1 送信数の上限に達しました",
     Q, "quota", None, None),
    ("Japanese hosting (reported wording)", "data", 550, "1日の送信通数の上限を超えました",
     Q, "quota", "day", None),
]


@pytest.mark.parametrize(
    ("provider", "stage", "code", "text", "kind", "reason", "window", "wait"), REPLIES,
    ids=[f"{row[0]}-{row[2]}-{i}" for i, row in enumerate(REPLIES)])
def test_a_providers_reply(provider, stage, code, text, kind, reason, window, wait) -> None:
    error = SmtpStageError(stage, code, text, "SMTPResponseException",
                           permanent=code is not None and code >= 500)
    verdict = classify(error)
    assert (verdict.kind, verdict.pause_reason) == (kind, reason), provider
    assert verdict.window == window
    assert verdict.retry_after_s == wait


def test_a_quota_reply_never_fails_a_recipient() -> None:
    for _provider, stage, code, text, kind, *_ in REPLIES:
        if kind is Q:
            verdict = classify(SmtpStageError(stage, code, text, "SMTPResponseException",
                                              permanent=True))
            assert verdict.kind is Kind.QUOTA
