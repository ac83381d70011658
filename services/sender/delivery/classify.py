"""What a failed SMTP step means for the recipient and for the account: pure decisions, no I/O.

The sender turns every `SmtpStageError` into a `Verdict` and acts on its `kind`:

- PERMANENT: this recipient (or this message) can never go: `mail.failed` permanent=true;
- TRANSIENT: try this recipient again later (`mail.deferred`, delayed retry); when
  `pause_reason` is set ("connect") the failure is the server's, not the recipient's, and the
  caller pauses the account after several in a row;
- THROTTLED: the provider asks us to slow down: defer without failing and slow the account
  (`throttle.RateLearner` learns the provider's window), by `retry_after_s` when the server
  named a wait;
- ACCOUNT_FAULT: the account is broken (login, TLS, sender refused, no SMTP service, a policy
  or blocklisting refusal, RFC 3463 X.7.x): pause it and leave the recipient queued; failing
  it would fail the whole queue behind it;
- QUOTA: the provider's sending quota is used up (X.4.5, or its words: "Daily user sending
  quota exceeded", "SubmissionQuotaExceeded", "Sending quota exceeded"): pause the account
  until the quota is likely back, `window` when the reply names one; nobody is failed;
- UNKNOWN: the payload was written and no reply came: the server may have accepted the mail,
  so a blind retry could send it twice.

The pacing helpers at the end compute the account's effective interval while throttled and
its way back to the configured one.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from shared.smtp import SmtpStageError

__all__ = [
    "Kind",
    "Verdict",
    "classify",
    "contract_stage",
    "decayed_interval_ms",
    "retry_delay",
]


class Kind(StrEnum):
    SENT = "sent"  # not produced by classify(); for completeness
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    THROTTLED = "throttled"
    ACCOUNT_FAULT = "account_fault"
    QUOTA = "quota"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    event_stage: str  # the `stage` of mail.failed (contract §2)
    pause_reason: str | None = None  # "auth", "tls", "sender_refused", "connect", "pop", ...
    retry_after_s: float | None = None  # the wait the server asked for, if any
    window: str | None = None  # QUOTA: "minute", "hour" or "day", when the reply says


# SmtpSession's stages -> the contract's: the sender's stage is MAIL FROM, the recipient's RCPT.
_CONTRACT_STAGES = {
    "resolve": "connect", "connect": "connect", "ehlo": "connect", "tls": "tls", "pop": "pop",
    "auth": "auth", "mail": "sender", "rcpt": "recipient", "data": "data",
}

# 421 service closing / too many connections: the whole session, at any stage. 450 mailbox
# busy, 451 local error, 452 insufficient storage, 454 temporary failure: "later, slower" for
# the session when they come before any recipient (connect, EHLO, AUTH, MAIL); at RCPT and
# DATA they concern this recipient or message (greylisting, a busy mailbox), unless the words
# speak of a rate.
_THROTTLE_CODES = frozenset({421, 450, 451, 452, 454})
_SESSION_STAGES = frozenset({"resolve", "connect", "ehlo", "auth", "mail"})
# RFC 3463 enhanced status code, at the start of the reply's text: class.subject.detail.
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# The provider's own sending quota (not a recipient's full mailbox, X.2.2).
_QUOTA_TEXT = re.compile(
    r"quota\s*(?:exceeded|reached|exhausted)|(?:sending|submission|daily|hourly|relay)\w*"
    r"\s+(?:\w+\s+){0,2}(?:quota|limit)|quota\w*exceeded|credits?\s+exceeded|"
    r"sending\s+limit|limit\s+exceeded\s+for\s+(?:user|sender|account)|"
    r"送信(?:数|通数)?の?(?:上限|制限)", re.IGNORECASE)
_MAILBOX_FULL = re.compile(r"mailbox\s+(?:is\s+)?full|over\s+quota|mailbox\s+quota|"
                           r"quota\s+exceeded\s+for\s+(?:the\s+)?(?:recipient|mailbox)",
                           re.IGNORECASE)
_WINDOWS = (("day", re.compile(r"daily|\bday\b|24\s*h|1日|日次", re.IGNORECASE)),
            ("hour", re.compile(r"hourly|\bhour\b|時間", re.IGNORECASE)),
            ("minute", re.compile(r"\bminute\b|per\s+min\b|1分", re.IGNORECASE)))

_WAIT_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
               "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
               "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600}
# "try again in 30 seconds", "retry after 5 min", "wait 2 minutes": only after a retry word,
# so that "500 messages in 1 hour" and our own "timed out after 10 s" name no wait.
_RETRY_AFTER = re.compile(
    r"\b(?:(?:again|retry|try)\s+(?:in|after)|wait(?:\s+for)?)\s+"
    r"(\d+(?:\.\d+)?)\s*(" + "|".join(sorted(_WAIT_UNITS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE)
# "rate" only as a word ("rate limit", "rate-limited", "sending rate", "ratelimit"), never
# inside "generated", "separate" or "accurate". "Too many hops" is a mail loop, not a limit.
_THROTTLE_TEXT = re.compile(
    r"too\s+many(?!\s+hops)|\brate(?:s|limit\w*)?\b|slow(?:ing)?\s+down|before\s+sending|"
    r"volume", re.IGNORECASE)

# A session that lacks AUTH or TLS is told so at MAIL (sometimes at RCPT): the account's fault.
_NEEDS_TLS = re.compile(r"starttls|\btls\b|encrypt", re.IGNORECASE)
_NEEDS_AUTH = re.compile(r"auth\w*\s+required|must\s+(?:first\s+)?auth|not\s+authenticated",
                         re.IGNORECASE)
# The provider refuses to send as the account's From (SES, SendGrid, Microsoft's SendAs).
_SENDER_NOT_ALLOWED = re.compile(
    r"(?:address|identit\w*|domain)\s+(?:is\s+)?not\s+verified|verified\s+sender|"
    r"not\s+allowed\s+to\s+send\s+as|SendAsDenied", re.IGNORECASE)
# With the SIZE extension a server refuses a too big message at MAIL FROM: the message's fault.
_TOO_BIG = re.compile(r"\b5\.3\.4\b|size\s+exceed|too\s+(?:big|large)", re.IGNORECASE)

# Exceptions (by name, as SmtpStageError keeps them) of a lost or unreachable connection.
_CONNECTION_LOST = frozenset({
    "TimeoutError", "SMTPServerDisconnected", "SMTPTimeoutError", "SMTPReadTimeoutError",
    "SMTPConnectTimeoutError", "SMTPConnectError", "OSError", "ConnectionError",
    "ConnectionResetError", "ConnectionAbortedError", "ConnectionRefusedError",
    "BrokenPipeError", "IncompleteReadError", "gaierror",
})


def contract_stage(stage: str) -> str:
    """The contract's name (mail.failed `stage`) of an SmtpSession stage."""
    try:
        return _CONTRACT_STAGES[stage]
    except KeyError:
        raise ValueError(f"unknown SMTP stage {stage!r}") from None


# A table of ordered rules, longer than a function should be on purpose: each check is one
# line of the module's docstring, and splitting it would hide the order they depend on.
def classify(error: SmtpStageError) -> Verdict:
    """What `error` means: see the module's docstring. The order of the checks matters."""
    stage, code = error.stage, error.code
    event_stage = contract_stage(stage)
    is_5xx = code is not None and 500 <= code <= 599

    # First: after the payload without an answer, nothing else about the error is known.
    if error.ambiguous:
        return Verdict(Kind.UNKNOWN, "data")

    # POP before SMTP has no reply codes: PopError is permanent only for a refused login;
    # anything else is an unreachable server, counted like a failed connect.
    if stage == "pop":
        if error.permanent:
            return Verdict(Kind.ACCOUNT_FAULT, "pop", pause_reason="pop")
        return Verdict(Kind.TRANSIENT, "pop", pause_reason="connect")

    enhanced = _ENHANCED.match(error.text)
    subject_detail = f"{enhanced.group(2)}.{enhanced.group(3)}" if enhanced else None
    rate_words = bool(_THROTTLE_TEXT.search(error.text))

    # A recipient's full mailbox (X.2.2) is that recipient's, and may empty: later.
    if subject_detail == "2.2" or _MAILBOX_FULL.search(error.text):
        return Verdict(Kind.TRANSIENT, event_stage, retry_after_s=_retry_after_s(error.text))

    # The provider's quota used up: not a fault of anyone's, nothing to fail; the account
    # waits until the quota is likely back.
    if _QUOTA_TEXT.search(error.text) or (subject_detail == "4.5" and not rate_words):
        return Verdict(Kind.QUOTA, event_stage, pause_reason="quota",
                       retry_after_s=_retry_after_s(error.text), window=_window(error.text))

    # X.2.x in a 4xx: this recipient's mailbox is busy or receiving too fast (Gmail's 4.2.1
    # "receiving mail at a rate"): that job later, the account at its pace.
    if enhanced and enhanced.group(1) == "4" and enhanced.group(2) == "2" and code != 421:
        return Verdict(Kind.TRANSIENT, event_stage, retry_after_s=_retry_after_s(error.text))

    # A throttling reply for the session (421 at any stage, a 4xx before any recipient, or
    # words of a rate) defers and slows the account; failing the recipient would fail the
    # rest of the queue.
    session_wide = code == 421 or (code in _THROTTLE_CODES and stage in _SESSION_STAGES)
    if session_wide or rate_words or (stage in _SESSION_STAGES
                                      and _RETRY_AFTER.search(error.text)):
        return Verdict(Kind.THROTTLED, event_stage, retry_after_s=_retry_after_s(error.text))

    if stage in ("resolve", "connect", "ehlo"):
        # "554 no SMTP service here" or an unusable host: asking again will not help.
        if is_5xx or error.permanent:
            return Verdict(Kind.ACCOUNT_FAULT, event_stage, pause_reason="connect")
        # Refused, timed out, unreachable, reset: maybe a blip; the caller pauses after a few.
        return Verdict(Kind.TRANSIENT, event_stage, pause_reason="connect")

    if stage in ("tls", "auth"):
        if code is None and error.exception in _CONNECTION_LOST:
            # Dropped or timed out mid-handshake: the network's fault more likely than the
            # account's; counted like a failed connect.
            return Verdict(Kind.TRANSIENT, event_stage, pause_reason="connect")
        # TLS: certificate invalid, STARTTLS not offered, handshake refused. AUTH: login
        # refused (530/534/535/538, any 5xx) or no usable mechanism offered (no code).
        if stage == "tls" or code is None or is_5xx:
            return Verdict(Kind.ACCOUNT_FAULT, event_stage, pause_reason=stage)
        return Verdict(Kind.TRANSIENT, event_stage)  # some other 4xx at AUTH

    # Only MAIL, RCPT and DATA are left. "530 Must issue a STARTTLS command first", "530
    # Authentication required": the session, not the address, is wrong; every recipient would
    # get the same answer.
    if is_5xx and (code == 530 or _NEEDS_AUTH.search(error.text)):
        reason = "tls" if _NEEDS_TLS.search(error.text) else "auth"
        return Verdict(Kind.ACCOUNT_FAULT, event_stage, pause_reason=reason)

    if is_5xx and _SENDER_NOT_ALLOWED.search(error.text):
        return Verdict(Kind.ACCOUNT_FAULT, event_stage, pause_reason="sender_refused")

    # X.7.x: security or policy (relaying denied, the sender's domain not authenticated, a
    # blocklisting, content refused by policy). The account's provider refuses the account,
    # not the recipient: suppressing or failing recipients for it would wipe valid addresses.
    if is_5xx and enhanced and enhanced.group(2) == "7":
        reason = "sender_refused" if stage == "mail" else "account"
        return Verdict(Kind.ACCOUNT_FAULT, event_stage, pause_reason=reason)

    if stage == "mail":
        if code is None and error.permanent:
            # SMTPUTF8 needed but not offered: this recipient's address can never go here.
            return Verdict(Kind.PERMANENT, "recipient")
        if is_5xx and (code == 552 or _TOO_BIG.search(error.text)):
            return Verdict(Kind.PERMANENT, event_stage)  # this message is too big
        if is_5xx:
            # The account's From address is refused: the same for every recipient.
            return Verdict(Kind.ACCOUNT_FAULT, event_stage, pause_reason="sender_refused")

    # RCPT 5xx (user unknown), DATA 5xx (too big, content rejected), a permanent local
    # refusal; everything else (other 4xx, connection lost before the payload) is transient.
    if error.permanent or is_5xx:
        return Verdict(Kind.PERMANENT, event_stage)
    # A named wait (greylisting's "try again in 300 seconds") goes on this job's retry.
    return Verdict(Kind.TRANSIENT, event_stage, retry_after_s=_retry_after_s(error.text))


def _window(text: str) -> str | None:
    """The quota window the reply names ("Daily user sending quota"), if any."""
    return next((window for window, words in _WINDOWS if words.search(text)), None)


def _retry_after_s(text: str) -> float | None:
    """The wait a server names ("try again in 30 seconds"), in seconds; None when it names
    none."""
    match = _RETRY_AFTER.search(text)
    if match is None:
        return None
    seconds = float(match.group(1)) * _WAIT_UNITS[match.group(2).lower()]
    return seconds if seconds > 0 else None


def retry_delay(attempts: int, tiers: Sequence[int]) -> int:
    """Seconds before the next try after `attempts` tries: tier attempts-1, the last tier for
    every try beyond."""
    if not tiers:
        raise ValueError("no retry tiers")
    index = min(max(attempts, 1), len(tiers)) - 1
    return tiers[index]


def decayed_interval_ms(current_ms: int, configured_ms: int, successes_in_a_row: int,
                        every: int = 10) -> int:
    """The account's interval after `successes_in_a_row` sends in a row without throttling.

    Every `every` successes, halve the excess over the configured interval: quick enough to
    recover, slow enough not to run straight back into the provider's limit. Within 50 ms of
    the configured interval it snaps back to it, so the excess does not halve for ever.
    """
    if every < 1:
        raise ValueError("every must be at least 1")
    if current_ms <= configured_ms:
        return configured_ms
    if successes_in_a_row < every or successes_in_a_row % every:
        return current_ms
    interval = configured_ms + round((current_ms - configured_ms) / 2)
    return configured_ms if interval - configured_ms <= 50 else interval
