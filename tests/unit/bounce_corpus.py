"""Bounce messages as real MTAs write them (their layout and words; addresses and hosts made
up), each with what it must be read as: (name, raw bytes, report kind, recipient, kind,
status, original Message-ID)."""

ORIGINAL_ID = "<crm-2026-000123.0@shop.example.com>"
QUOTED = f"""From: news@shop.example.com
To: tanaka@example.jp
Subject: =?utf-8?b?MTHmnIjjga7jgYrnn6XjgonjgZs=?=
Message-ID: {ORIGINAL_ID}
Date: Tue, 01 Dec 2026 09:30:00 +0000
"""


def dsn(*, reporting: str, recipient: str, action: str, status: str, diagnostic: str,
        remote: str | None, human: str, sender: str = "MAILER-DAEMON@mx.shop.example.com",
        third: str = "text/rfc822-headers", extra_fields: str = "") -> bytes:
    remote_line = f"Remote-MTA: dns; {remote}\n" if remote else ""
    diagnostic_line = f"Diagnostic-Code: {diagnostic}\n" if diagnostic else ""
    return f"""From: {sender}
To: news+b.7Hq2xk@shop.example.com
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUND"

--BOUND
Content-Type: text/plain; charset=us-ascii

{human}

--BOUND
Content-Type: message/delivery-status

Reporting-MTA: dns; {reporting}
X-Postfix-Queue-ID: 4Zk9xQ1abc
Arrival-Date: Tue,  1 Dec 2026 09:30:01 +0000 (UTC)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
{remote_line}{diagnostic_line}{extra_fields}
--BOUND
Content-Type: {third}

{QUOTED}
--BOUND--
""".encode()


POSTFIX_UNKNOWN = dsn(
    reporting="mx.shop.example.com", recipient="tanaka@example.jp", action="failed",
    status="5.1.1", remote="mx1.example.jp",
    diagnostic="smtp; 550 5.1.1 <tanaka@example.jp>: Recipient address rejected: User "
               "unknown in virtual mailbox table",
    human="This is the mail system at host mx.shop.example.com.\n\nI'm sorry to have to "
          "inform you that your message could not\nbe delivered to one or more recipients.")

POSTFIX_FULL = dsn(
    reporting="mx.shop.example.com", recipient="tanaka@example.jp", action="failed",
    status="5.2.2", remote="mx1.example.jp",
    diagnostic="smtp; 552 5.2.2 <tanaka@example.jp>: Mailbox full", human="mailbox full")

POSTFIX_DELAYED = dsn(
    reporting="mx.shop.example.com", recipient="tanaka@example.jp", action="delayed",
    status="4.4.1", remote=None,
    diagnostic="",
    extra_fields="Will-Retry-Until: Sat,  5 Dec 2026 09:30:01 +0000 (UTC)\n",
    human="This is the mail system at host mx.shop.example.com.\n\n####################\n"
          "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
          "connect to mx1.example.jp[203.0.113.5]:25: Connection timed out")

GMAIL_UNKNOWN = dsn(
    reporting="googlemail.com", recipient="tanaka@gmail.com", action="failed",
    status="5.1.1", remote="gmail-smtp-in.l.google.com",
    sender="Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
    diagnostic="smtp; 550-5.1.1 The email account that you tried to reach does not exist. "
               "Please try double-checking the recipient's email address for typos or "
               "unnecessary spaces. For more information, go to "
               "https://support.google.com/mail/?p=NoSuchUser a1si123 - gsmtp",
    human="Address not found\n\nYour message wasn't delivered to tanaka@gmail.com because "
          "the address couldn't be found, or is unable to receive mail.",
    third="message/rfc822")

GMAIL_BLOCKED = dsn(
    reporting="googlemail.com", recipient="suzuki@gmail.com", action="failed",
    status="5.7.26", remote="gmail-smtp-in.l.google.com",
    diagnostic="smtp; 550-5.7.26 This mail has been blocked because the sender is "
               "unauthenticated. Gmail requires all senders to authenticate with either SPF "
               "or DKIM. - gsmtp",
    human="Message blocked")

YAHOO_POLICY = dsn(
    reporting="mta1.mail.yahoo.com", recipient="sato@yahoo.com", action="failed",
    status="5.7.9", remote="mta7.am0.yahoodns.net",
    diagnostic="smtp; 554 5.7.9 Message not accepted for policy reasons.  See "
               "https://postmaster.yahooinc.com/error-codes",
    human="Sorry, we were unable to deliver your message to the following address.")

EXCHANGE_UNKNOWN = dsn(
    reporting="TY2PR01MB1234.jpnprd01.prod.outlook.com", recipient="kato@contoso.co.jp",
    action="failed", status="5.1.10", remote=None,
    sender="Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.co.jp>",
    diagnostic="smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by "
               "SMTP address lookup",
    human="Your message to kato@contoso.co.jp couldn't be delivered.\nkato wasn't found at "
          "contoso.co.jp.", third="text/rfc822-headers")

EXIM_SPAMHAUS = dsn(
    reporting="mail.shop.example.com", recipient="ito@example.org", action="failed",
    status="5.0.0", remote="mx.example.org",
    diagnostic="smtp; 550 Service unavailable; Client host [198.51.100.7] blocked using "
               "zen.spamhaus.org",
    human="This message was created automatically by mail delivery software.")

SENDMAIL_UNKNOWN = dsn(
    reporting="relay.shop.example.com", recipient="yamada@example.net", action="failed",
    status="5.1.1", remote="mail.example.net",
    diagnostic="SMTP; 550 5.1.1 <yamada@example.net>... User unknown",
    human="   ----- The following addresses had permanent fatal errors -----\n"
          "<yamada@example.net>\n    (reason: 550 5.1.1 <yamada@example.net>... User unknown)")

DOCOMO_UNKNOWN = dsn(
    reporting="mfsmax.docomo.ne.jp", recipient="hanako@docomo.ne.jp", action="failed",
    status="5.0.0", remote="mfsmax.docomo.ne.jp",
    diagnostic="smtp; 550 Unknown user hanako@docomo.ne.jp",
    human="このメッセージは配信できませんでした。宛先のメールアドレスは存在しません。")

QMAIL_PLAIN = f"""From: MAILER-DAEMON@mail.example.com
To: news@shop.example.com
Subject: failure notice

Hi. This is the qmail-send program at mail.example.com.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<kimura@example.com>:
203.0.113.9 does not like recipient.
Remote host said: 550 5.1.1 <kimura@example.com>: Recipient address rejected: User unknown
Giving up on 203.0.113.9.

--- Below this line is a copy of the message.

Return-Path: <news@shop.example.com>
{QUOTED}
hello
""".encode()

EXIM_PLAIN_FULL = f"""From: Mail Delivery System <Mailer-Daemon@mail.example.net>
To: news@shop.example.com
Subject: Mail delivery failed: returning message to sender
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  mori@example.net
    Mailbox quota exceeded (mailbox is full)

------ This is a copy of the message, including all the headers. ------

{QUOTED}
""".encode()

# Exchange 5.5/2000 wrote no report: a text flufl.bounce's Exchange detector knows (the
# address is not alone on its line, so the table of this project's own misses it).
EXCHANGE_2000_PLAIN = f"""From: System Administrator <postmaster@contoso.example>
To: news@shop.example.com
Subject: Undeliverable: =?utf-8?b?MTHmnIjjga7jgYrnn6XjgonjgZs=?=
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Your message

  Subject: 11月のお知らせ
  Sent: 12/1/2026 9:30 AM

did not reach the following recipient(s):

kobayashi@contoso.example on 12/1/2026 9:31 AM
            The e-mail account does not exist at the organization this message was
            sent to.
            <mail.contoso.example #5.1.1>
            MSEXCH:IMS:Contoso:Tokyo:MAIL 0 (000C05A6) Unknown Recipient

--- Original message follows ---
{QUOTED}
""".encode()

COMPLAINT = f"""From: staff@hotmail.example
To: abuse@shop.example.com
Subject: complaint about message
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"

--ARF
Content-Type: text/plain

This is an email abuse report for an email message received from IP 198.51.100.7.

--ARF
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <news+b.7Hq2xk@shop.example.com>
Original-Rcpt-To: <watanabe@hotmail.example>
Arrival-Date: Tue, 01 Dec 2026 09:31:00 +0000

--ARF
Content-Type: message/rfc822

{QUOTED}
hello
--ARF--
""".encode()

VACATION = b"""From: takahashi@example.co.jp
To: news@shop.example.com
Subject: =?utf-8?b?44CQ6Ieq5YuV5b+c562U44CR5LiN5Zyo44Gu44GK55+l44KJ44Gb?=
Auto-Submitted: auto-replied
Content-Type: text/plain; charset=utf-8

I am out of the office until December 7.
"""

# (name, raw, report kind, recipient, kind, status, original Message-ID)
CORPUS = [
    ("postfix user unknown", POSTFIX_UNKNOWN, "dsn", "tanaka@example.jp", "hard", "5.1.1",
     ORIGINAL_ID),
    ("postfix mailbox full", POSTFIX_FULL, "dsn", "tanaka@example.jp", "soft", "5.2.2",
     ORIGINAL_ID),
    ("postfix delayed", POSTFIX_DELAYED, "dsn", "tanaka@example.jp", "soft", "4.4.1",
     ORIGINAL_ID),
    ("gmail no such user", GMAIL_UNKNOWN, "dsn", "tanaka@gmail.com", "hard", "5.1.1",
     ORIGINAL_ID),
    ("gmail unauthenticated sender", GMAIL_BLOCKED, "dsn", "suzuki@gmail.com", "policy",
     "5.7.26", ORIGINAL_ID),
    ("yahoo policy", YAHOO_POLICY, "dsn", "sato@yahoo.com", "policy", "5.7.9", ORIGINAL_ID),
    ("exchange recipient not found", EXCHANGE_UNKNOWN, "dsn", "kato@contoso.co.jp", "hard",
     "5.1.10", ORIGINAL_ID),
    ("exim spamhaus block in 5.0.0", EXIM_SPAMHAUS, "dsn", "ito@example.org", "policy",
     "5.0.0", ORIGINAL_ID),
    ("sendmail user unknown", SENDMAIL_UNKNOWN, "dsn", "yamada@example.net", "hard", "5.1.1",
     ORIGINAL_ID),
    ("docomo unknown user in 5.0.0", DOCOMO_UNKNOWN, "dsn", "hanako@docomo.ne.jp", "hard",
     "5.0.0", ORIGINAL_ID),
    ("qmail plain text", QMAIL_PLAIN, "plain", "kimura@example.com", "hard", "5.1.1",
     ORIGINAL_ID),
    ("exim plain text, quota", EXIM_PLAIN_FULL, "plain", "mori@example.net", "soft", None,
     ORIGINAL_ID),
    ("exchange 2000 plain text (flufl.bounce)", EXCHANGE_2000_PLAIN, "plain",
     "kobayashi@contoso.example", "hard", None, ORIGINAL_ID),
    ("feedback report", COMPLAINT, "complaint", "watanabe@hotmail.example", "complaint", None,
     ORIGINAL_ID),
    ("vacation reply", VACATION, "autoreply", None, None, None, None),
]
