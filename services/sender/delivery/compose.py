"""The exact bytes of one mail per recipient, on the sender's hot path.

Building an `EmailMessage` from scratch costs most of a millisecond a mail, nearly all of it in
the email package's header parser and generator (see bench/bench_compose.py). `Composer`
instead writes the message itself, once per delivery for everything that is the same for every
recipient (From, Reply-To, custom headers, MIME structure, bodies without placeholders), and
per recipient only To, Subject, Date, Message-ID and the bodies that have placeholders.

What it writes:

- header values that are ASCII go as they are, folded at spaces to 78 columns; other values
  (and ASCII text that would read as an RFC 2047 encoded word) go as UTF-8 `B` encoded words,
  so the receiver shows exactly the text given; display names are atoms, a quoted string or
  encoded words;
- addresses: a non-ASCII domain with an ASCII local part is written in its IDNA (xn--) form,
  so no SMTPUTF8 is needed; a non-ASCII local part (or a domain IDNA refuses) goes raw as
  UTF-8 and the mail `needs_smtputf8` (use `envelope_address` for MAIL FROM / RCPT TO, so the
  envelope agrees with the headers);
- bodies: `text/plain` and/or `text/html` (both: `multipart/alternative`), UTF-8, CRLF line
  ends; 7bit when ASCII with lines of at most 998 bytes, base64 otherwise (7-bit clean for
  servers without 8BITMIME).

Header injection: the email package of Python 3.11 before the CVE-2024-6923 fix writes an
encoded word that decodes to CR/LF as a real line break when it refolds a header, so it is not
used here. Control characters and line breaks in any header text are refused (ValueError), text
that looks like an encoded word is itself encoded, and every mail's header block is checked to
hold exactly the header names written here, each once, before it is returned.
"""

import binascii
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid

from services.sender.delivery.headers import (  # noqa: F401 - tests reach them here
    _ADDRESS,
    _CRLF,
    _ENCODED_WORD,
    _EW_BYTES,
    _EW_BYTES_NAME,
    _FORBIDDEN,
    _HARD_LIMIT,
    _SOFT_LIMIT,
    _ascii_domain,
    _checked,
    _encoded_words,
    _fold,
    _mailbox,
    _unstructured,
    _wire_address,
)
from shared.templating import Template, recipient_values

__all__ = ["ComposedMail", "Composer", "DeliveryContent", "check_custom_header",
           "envelope_address"]


_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext
_LIST_HEADERS = frozenset({"list-unsubscribe", "list-unsubscribe-post"})


@dataclass(frozen=True)
class DeliveryContent:
    """What the sender loads from the stored delivery (one per delivery)."""

    from_address: str
    from_name: str | None
    reply_to: str | None
    subject: str
    text: str | None
    html: str | None
    headers: Mapping[str, str]
    ref: int = 0  # the delivery's short number, for a VERP envelope sender (verp.py)


@dataclass(frozen=True)
class ComposedMail:
    message_id: str  # with angle brackets, as in the Message-ID header
    data: bytes  # the whole message, CRLF line ends (DATA adds dot-stuffing and the end)
    needs_smtputf8: bool  # an address in the headers is raw UTF-8


class Composer:
    """Composes the mails of one delivery; build one per delivery and reuse it.

    Raises ValueError (from `__init__` for the delivery's own fields, from `compose` for a
    recipient's) for anything that cannot be written safely.
    """

    def __init__(self, content: DeliveryContent) -> None:
        if content.text is None and content.html is None:
            raise ValueError("a mail needs a text or an html body")
        self.delivery_ref = content.ref
        from_address, from_utf8 = _wire_address(content.from_address)
        self._smtputf8 = from_utf8
        head = [_mailbox("From", content.from_name, from_address)]
        names = ["From"]
        if content.reply_to:
            reply_to, reply_utf8 = _wire_address(content.reply_to)
            self._smtputf8 = self._smtputf8 or reply_utf8
            head.append(_mailbox("Reply-To", None, reply_to))
            names.append("Reply-To")
        self._head = _CRLF.join(head) + _CRLF

        self._subject = Template.parse(content.subject, html=False)
        self._subject_line = None if self._subject.names else _unstructured(
            "Subject", content.subject)

        # Message-IDs on the From domain, as written (IDNA when it can be).
        self._msgid_domain = from_address.rpartition("@")[2]
        self._date_second = -1
        self._date_line = ""

        tail = ["MIME-Version: 1.0"]
        seen: set[str] = set()
        for name, value in content.headers.items():
            check_custom_header(name, value)
            if name.lower() in seen:
                raise ValueError(f"header {name} is given twice")
            seen.add(name.lower())
            tail.append(_unstructured(name, value))
        self._tail = _CRLF.join(tail) + _CRLF

        self._parts = [
            (Template.parse(source, html=kind == "html"), f'text/{kind}; charset="utf-8"')
            for kind, source in (("plain", content.text), ("html", content.html))
            if source is not None
        ]
        # Bodies without placeholders are encoded once, here.
        self._fixed = [None if t.names else _encode_body(t.parts[0]) for t, _ in self._parts]
        self._needs_values = bool(self._subject.names) or any(t.names for t, _ in self._parts)
        self._boundary = _new_boundary()
        names += ["To", "Subject", "Date", "Message-ID", "MIME-Version", *content.headers,
                  "Content-Type"]
        if len(self._parts) == 1:
            names.append("Content-Transfer-Encoding")
        self._header_names = [name.encode("ascii") for name in names]

    def compose(self, *, email: str, name: str | None, vars: Mapping[str, str]) -> ComposedMail:
        """One recipient's mail; `vars` must fill every placeholder (the dispatcher checked)."""
        to_address, to_utf8 = _wire_address(email)
        values = recipient_values(email, name, vars) if self._needs_values else {}

        subject_line = self._subject_line
        if subject_line is None:
            subject_line = _unstructured("Subject", self._subject.render(values))
        message_id = make_msgid(domain=self._msgid_domain)
        header = "".join((
            self._head,
            _mailbox("To", name, to_address), _CRLF,
            subject_line, _CRLF,
            self._date(), _CRLF,
            "Message-ID: ", message_id, _CRLF,
            self._tail,
        ))

        bodies = [fixed if fixed is not None else _encode_body(template.render(values))
                  for (template, _), fixed in zip(self._parts, self._fixed, strict=True)]
        if len(bodies) == 1:
            body, cte = bodies[0]
            header += (f"Content-Type: {self._parts[0][1]}\r\n"
                       f"Content-Transfer-Encoding: {cte}\r\n\r\n")
            data = header.encode("utf-8") + body
        else:
            data = header.encode("utf-8") + self._multipart(bodies)
        _check_header_block(data, self._header_names)
        return ComposedMail(message_id=message_id, data=data,
                            needs_smtputf8=self._smtputf8 or to_utf8)

    def _multipart(self, bodies: list[tuple[bytes, str]]) -> bytes:
        boundary = self._boundary
        # base64 never holds "=_", the start of every boundary; a 7bit body holds this
        # delivery's boundary only if a request put it there on purpose: that mail gets its own.
        while any(cte == "7bit" and boundary.encode("ascii") in body for body, cte in bodies):
            boundary = _new_boundary()
        delimiter = b"--" + boundary.encode("ascii")
        out = [f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
               .encode("ascii")]
        for (_, content_type), (body, cte) in zip(self._parts, bodies, strict=True):
            out.append(delimiter + (f"\r\nContent-Type: {content_type}\r\n"
                                    f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode("ascii"))
            out.append(body)
        out.append(delimiter + b"--\r\n")
        return b"".join(out)

    def _date(self) -> str:
        # Formatting a date costs a few µs: once a second is enough.
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            moment = datetime.fromtimestamp(now, UTC)
            self._date_line = "Date: " + format_datetime(moment)
        return self._date_line


def check_custom_header(name: str, value: str) -> None:
    """A header a request may add: `X-*`, `List-Unsubscribe` or `List-Unsubscribe-Post`, with a
    value free of line breaks and control characters. Raises ValueError saying why."""
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"header name {name!r} is not a valid header name")
    lowered = name.lower()
    if not (lowered.startswith("x-") and len(name) > 2) and lowered not in _LIST_HEADERS:
        raise ValueError(
            f"header {name} is not allowed: only X-*, List-Unsubscribe, List-Unsubscribe-Post")
    _checked(f"header {name}", value)


def envelope_address(address: str) -> str:
    """The address as the headers carry it (IDNA domain when the local part is ASCII), for
    MAIL FROM and RCPT TO; SMTPUTF8 is needed only when the result is not ASCII."""
    return _wire_address(address)[0]


# -- header text ----------------------------------------------------------------------------


def account_address_problem(from_address: str, reply_to: str | None) -> str | None:
    """Why the account's From or Reply-To cannot be written, or None: the account's fault,
    the same for every recipient."""
    for field, address in (("from_address", from_address), ("reply_to", reply_to)):
        if address:
            try:
                _wire_address(address)
            except ValueError as error:
                return f"{field}: {error}"
    return None


def _check_header_block(data: bytes, expected: list[bytes]) -> None:
    """The last guard against injection: the header block holds exactly the header lines
    written, in order, with CRLF only as line ends and no line over 998 bytes."""
    end = data.find(b"\r\n\r\n")
    block = data[:end]
    lines = block.split(b"\r\n")
    names = [line.partition(b":")[0] for line in lines if line[:1] not in (b" ", b"\t")]
    # As many CR and LF as CRLFs: none stands alone.
    crlfs = len(lines) - 1
    if (end < 0 or names != expected or block.count(b"\r") != crlfs
            or block.count(b"\n") != crlfs or max(map(len, lines)) > _HARD_LIMIT):
        raise ValueError("the composed header block is not the one written (refused)")


# -- bodies ---------------------------------------------------------------------------------


def _encode_body(text: str) -> tuple[bytes, str]:
    """The body with CRLF line ends, ending with CRLF, and its Content-Transfer-Encoding."""
    data = text.encode("utf-8")
    # bytes.splitlines splits at CR, LF and CRLF only (str.splitlines would also split at
    # form feeds, NEL and U+2028 and change the text).
    lines = data.splitlines()
    if data.isascii() and b"\x00" not in data and max(map(len, lines), default=0) <= _HARD_LIMIT:
        return b"\r\n".join(lines) + b"\r\n", "7bit"
    canonical = b"\r\n".join(lines)
    if data.endswith((b"\n", b"\r")):
        canonical += b"\r\n"
    # One b2a_base64 call cut into 76-character lines: base64.encodebytes loops per line.
    encoded = binascii.b2a_base64(canonical, newline=False)
    lines = [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
    lines.append(b"")
    return b"\r\n".join(lines), "base64"


def _new_boundary() -> str:
    return "=_" + secrets.token_hex(16)
