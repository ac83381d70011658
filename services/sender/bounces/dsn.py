"""A message from a bounce mailbox, read: a delivery status notification (RFC 3464), a
feedback report (RFC 5965, a complaint), a bounce of an MTA that writes none of them (qmail,
Exim's plain text, old Exchange), an auto-reply (RFC 3834, vacation: ignored), or nothing
known. The standard library's email package parses; nothing here touches a server.

What finds the recipient's row again: the Message-ID of the returned original (quoted in
the report's third part, or in the text of a plain bounce), and the bounce's recipient
addresses (a VERP envelope sender comes back as the bounce's To / Delivered-To).
"""

import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from typing import Literal

from flufl.bounce import all_failures

from services.sender.bounces.kind import Kind, classify, status_of

ReportKind = Literal["dsn", "complaint", "plain", "autoreply", "unknown"]

_MESSAGE_ID = re.compile(r"^\s*Message-ID:\s*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)
# The returned original's envelope sender: a VERP address, when the bounce's own recipient
# headers lost it.
_RETURN_PATH = re.compile(r"^\s*Return-Path:\s*<([^<>\s]+@[^<>\s]+)>", re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(\.[\w-]+)+")
_PLAIN_MARKERS = re.compile(
    r"This is the qmail-send program|I'm afraid I wasn't able to deliver|"
    r"could not be delivered to one or more of its recipients|"
    r"Delivery has failed to these recipients|Undeliverable|Mail delivery failed|"
    r"Returned mail|Delivery Status Notification|配信不能|送信できませんでした",
    re.IGNORECASE)
_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery (subsystem|system)",
                     re.IGNORECASE)
_AUTOREPLY_SUBJECT = re.compile(
    r"out of (the )?office|auto(matic)?[ -]?reply|vacation|abwesen|不在|自動応答|自動返信",
    re.IGNORECASE)


@dataclass(frozen=True)
class BouncedRecipient:
    recipient: str
    kind: Kind
    status: str | None  # e.g. 5.1.1
    diagnostic: str  # verbatim
    remote_mta: str | None
    action: str | None = None


@dataclass(frozen=True)
class Report:
    kind: ReportKind
    recipients: list[BouncedRecipient] = field(default_factory=list)
    message_id: str | None = None  # of the original mail
    to: list[str] = field(default_factory=list)  # the bounce's own recipients (VERP)


def parse(raw: bytes) -> Report:
    # A NUL is never mail, and PostgreSQL's text refuses it: a diagnostic holding one could
    # never be recorded.
    message = email.message_from_bytes(raw.replace(b"\x00", b""), policy=email.policy.default)
    to = _addresses(message, "To", "Delivered-To", "X-Original-To", "Envelope-To")
    content = message.get_content_type()
    report_type = (message.get_param("report-type") or "").lower()
    if content == "multipart/report" and report_type == "delivery-status":
        return _dsn(message, to)
    if content == "multipart/report" and report_type == "feedback-report":
        return _complaint(message, to)
    text = _text(message)
    # An MTA's bounce may say Auto-Submitted too (Exim's do): the daemon's sender first.
    from_daemon = bool(_DAEMON.search(str(message.get("From", ""))))
    if from_daemon or _PLAIN_MARKERS.search(str(message.get("Subject", ""))):
        return _plain(message, text, to)
    if _is_autoreply(message):
        return Report("autoreply", to=to)
    if _PLAIN_MARKERS.search(text):
        return _plain(message, text, to)
    found = _detected(message, text)  # a format only the detector library knows
    if found:
        return Report("plain", found, _returned_message_id(text), to + _returned_senders(text))
    return Report("unknown", to=to)


def _dsn(message: EmailMessage, to: list[str]) -> Report:
    recipients = []
    message_id = None
    for part in message.iter_parts():
        kind = part.get_content_type()
        if kind in ("message/delivery-status", "message/global-delivery-status"):
            for fields in _status_groups(part):
                recipient = _final_recipient(fields)
                action = fields.get("action", "").lower() or None
                if recipient is None or action in ("delivered", "relayed", "expanded"):
                    continue
                status = status_of(fields.get("status", ""))
                diagnostic = _diagnostic(fields.get("diagnostic-code", ""))
                recipients.append(BouncedRecipient(
                    recipient=recipient, kind=classify(status, diagnostic, action),
                    status=status, diagnostic=diagnostic,
                    remote_mta=_after_type(fields.get("remote-mta", "")) or None,
                    action=action))
        elif kind in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers",
                      "message/global", "message/global-headers"):
            message_id = message_id or _original_message_id(part)
            to = to + _returned_senders(_payload_text(part))
    return Report("dsn", recipients, message_id, to)


def _complaint(message: EmailMessage, to: list[str]) -> Report:
    recipient = None
    message_id = None
    for part in message.iter_parts():
        kind = part.get_content_type()
        if kind == "message/feedback-report":
            fields = _fields(_payload_text(part))
            recipient = _first_address(fields.get("original-rcpt-to", ""))
        elif kind in ("message/rfc822", "text/rfc822-headers"):
            message_id = message_id or _original_message_id(part)
            to = to + _returned_senders(_payload_text(part))
            if recipient is None:
                original = _original(part)
                if original is not None:
                    recipient = _first_address(str(original.get("To", "")))
    recipients = [BouncedRecipient(recipient, "complaint", None, "feedback report (abuse)",
                                   None)] if recipient else []
    return Report("complaint", recipients, message_id, to)


def _plain(message: EmailMessage, text: str, to: list[str]) -> Report:
    """qmail's `<address>:` blocks, Exim's indented addresses, Exchange's lists: each
    address with the lines that follow it as its diagnostic; failing those, the addresses
    the detector library (flufl.bounce) finds."""
    recipients: list[BouncedRecipient] = []
    seen: set[str] = set()
    original_at = re.search(r"^-+ ?(Below this line is a copy|This is a copy|Original message"
                            r"|The headers of the original)", text, re.MULTILINE | re.IGNORECASE)
    body = text[:original_at.start()] if original_at else text
    lines = body.splitlines()
    for index, line in enumerate(lines):
        found = re.match(r"^\s*<?([^\s<>]+@[^\s<>:]+)>?:?\s*$", line)
        if not found or found.group(1).lower() in seen:
            continue
        address = found.group(1)
        seen.add(address.lower())
        following = []
        for later in lines[index + 1:index + 6]:
            if re.match(r"^\s*<?[^\s<>]+@[^\s<>:]+>?:?\s*$", later) or not later.strip():
                if following:
                    break
                continue
            following.append(later.strip())
        diagnostic = " ".join(following)[:1000]
        status = status_of(diagnostic)
        recipients.append(BouncedRecipient(address, classify(status, diagnostic), status,
                                           diagnostic, None))
    if not recipients:
        recipients = _detected(message, text)
    returned = text[original_at.start():] if original_at else text
    return Report("plain", recipients, _returned_message_id(returned),
                  to + _returned_senders(returned))


def _detected(message: EmailMessage, text: str) -> list[BouncedRecipient]:
    """The addresses flufl.bounce's detectors find, each with the line of the text that
    names it as its diagnostic. Its permanent failures are classified by that line like any
    other (unknown words stay soft: suppressed only after repeats, never at once)."""
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a detector tripping on a strange message is no bounce found
        return []
    found = []
    for addresses, permanent_failure in ((permanent, True), (temporary, False)):
        for raw in sorted(addresses):
            address = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            diagnostic = _line_naming(text, address)
            status = status_of(diagnostic)
            kind = classify(status, diagnostic) if permanent_failure else "soft"
            found.append(BouncedRecipient(address, kind, status, diagnostic, None,
                                          None if permanent_failure else "delayed"))
    return found


def _line_naming(text: str, address: str) -> str:
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if address.lower() in line.lower():
            return " ".join(part.strip() for part in lines[index:index + 2] if part.strip())
    return ""


def _returned_message_id(text: str) -> str | None:
    found = _MESSAGE_ID.search(text)
    return found.group(1) if found else None


def _returned_senders(text: str) -> list[str]:
    return _RETURN_PATH.findall(text)


# -- pieces ---------------------------------------------------------------------------------


def _status_groups(part: Message) -> list[dict[str, str]]:
    """The per-recipient field groups of a delivery-status part (the first is per message)."""
    text = _payload_text(part)
    groups = [_fields(block) for block in re.split(r"\r?\n\s*\r?\n", text) if block.strip()]
    return [group for group in groups if "final-recipient" in group
            or "original-recipient" in group]


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and name:
            fields[name] += " " + line.strip()  # a folded field
            continue
        key, colon, value = line.partition(":")
        if colon:
            name = key.strip().lower()
            fields.setdefault(name, value.strip())
    return fields


def _payload_text(part: Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list):  # the email package parses delivery-status as messages
        return "\n\n".join(
            "\n".join(f"{k}: {v}" for k, v in sub.items()) for sub in payload
            if isinstance(sub, Message))
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(payload)


def _final_recipient(fields: dict[str, str]) -> str | None:
    return (_first_address(_after_type(fields.get("final-recipient", "")))
            or _first_address(_after_type(fields.get("original-recipient", ""))))


def _after_type(value: str) -> str:
    """`rfc822; user@example.com` -> `user@example.com` (`dns; mx.example.com` likewise)."""
    return value.split(";", 1)[1].strip() if ";" in value else value.strip()


def _diagnostic(value: str) -> str:
    return _after_type(value) if value.lower().startswith(("smtp;", "x-", "unix;")) else value


def _first_address(text: str) -> str | None:
    found = _ADDRESS.search(text or "")
    return found.group(0) if found else None


def _addresses(message: Message, *names: str) -> list[str]:
    found = []
    for name in names:
        for value in message.get_all(name, []) or []:
            found += [m.group(0) for m in _ADDRESS.finditer(str(value))]
    return list(dict.fromkeys(found))


def _original(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    text = _payload_text(part)
    return email.message_from_string(text, policy=email.policy.default) if text else None


def _original_message_id(part: Message) -> str | None:
    original = _original(part)
    if original is not None and original.get("Message-ID"):
        return str(original["Message-ID"]).strip()
    found = _MESSAGE_ID.search(_payload_text(part))
    return found.group(1) if found else None


def _is_autoreply(message: Message) -> bool:
    auto = str(message.get("Auto-Submitted", "no")).lower()
    precedence = str(message.get("Precedence", "")).lower()
    return (auto not in ("", "no") or message.get("X-Autoreply") is not None
            or message.get("X-Autorespond") is not None
            or precedence in ("auto_reply", "auto-reply")
            or bool(_AUTOREPLY_SUBJECT.search(str(message.get("Subject", "")))))


def _text(message: Message) -> str:
    parts = []
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                parts.append(data.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(parts)
