"""Header values and addresses as a mail's header block takes them: ASCII folded at spaces to
78 columns, anything else as UTF-8 `B` encoded words; domains in their IDNA form (see
compose.py's docstring for why each choice)."""

import base64
import functools
import re

import idna

_SOFT_LIMIT = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters...
_HARD_LIMIT = 998  # ...and MUST be at most 998 bytes
# UTF-8 bytes per encoded word: "Subject: =?utf-8?b?<56 chars>?=" fits in 78 columns; a
# display name gets the most a word may hold (75 characters), 15 kanji, since it reads best as
# one word (the email package's parser shows a space between two words of a name).
_EW_BYTES = 42
_EW_BYTES_NAME = 45
_CRLF = "\r\n"

# Controls (TAB aside), DEL, C1 controls (NEL among them) and the Unicode line separators:
# anything a parser somewhere could take for the end of a line.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# Anything a decoder could take for an encoded word, even inside other text.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?[^?]*\?=")
_PIECES = re.compile(r"[ \t]*[^ \t]+(?:[ \t]+$)?")  # words with the spaces before them
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_PIECES = re.compile(r"[ \t]*[^ \t]+(?:[ \t]+$)?")  # words with the spaces before them
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


# A bare address: no spaces, controls, or characters that would end or split an address.
_ADDRESS_PART = r"[^\s<>()\[\],;:\"\\@\x00-\x1f\x7f-\x9f]+"
_ADDRESS = re.compile(f"{_ADDRESS_PART}@{_ADDRESS_PART}")


def _checked(what: str, value: str) -> str:
    if _FORBIDDEN.search(value):
        raise ValueError(f"{what} contains a line break or control character")
    return value


def _wire_address(address: str) -> tuple[str, bool]:
    """The address as written in headers, and whether it is raw UTF-8 (SMTPUTF8 needed)."""
    if not _ADDRESS.fullmatch(address):
        raise ValueError(f"{address!r} is not a bare mail address")
    if address.isascii():
        return address, False
    local, _, domain = address.rpartition("@")
    if local.isascii():
        ascii_domain = _ascii_domain(domain)
        if ascii_domain is not None:
            return f"{local}@{ascii_domain}", False
    return address, True


@functools.lru_cache(maxsize=1024)
def _ascii_domain(domain: str) -> str | None:
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


def _mailbox(header: str, display_name: str | None, address: str) -> str:
    """`Header: name <address>` (or the bare address), folded."""
    if not display_name:
        return _fold([f"{header}:", f" {address}"])
    _checked(f"the {header} display name", display_name)
    # A plain name stays as it is, on one line (up to the hard limit, a name is never folded).
    if display_name.isascii() and len(display_name) <= 900 and not _ENCODED_WORD.search(
            display_name):
        if _ATOMS.fullmatch(display_name):
            phrase = [" " + display_name]
        else:
            quoted = display_name.replace("\\", "\\\\").replace('"', '\\"')
            phrase = [f' "{quoted}"']
    else:
        phrase = [" " + word for word in _encoded_words(display_name, _EW_BYTES_NAME)]
    return _fold([f"{header}:", *phrase, f" <{address}>"])


def _unstructured(header: str, value: str) -> str:
    """`Header: value` for free text, folded; encoded words when it is not plain ASCII."""
    _checked(header, value)
    if value.isascii() and not _ENCODED_WORD.search(value):
        folded = _fold(_PIECES.findall(f"{header}: {value}"))
        if max(map(len, folded.split(_CRLF))) <= _HARD_LIMIT:
            return folded
        # a "word" longer than a line: encoded words can be cut anywhere
    return _fold([f"{header}:", *(" " + word for word in _encoded_words(value, _EW_BYTES))])


def _encoded_words(text: str, size: int) -> list[str]:
    """RFC 2047 `B` words of at most `size` UTF-8 bytes each, never cutting a character."""
    data = text.encode("utf-8")
    words = []
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a continuation byte
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[start:end]).decode('ascii')}?=")
        start = end
    return words


def _fold(pieces: list[str]) -> str:
    """Joins pieces into lines of at most `_SOFT_LIMIT` where it can. Every piece but the first
    starts with a space or TAB, so a new line starting with it is a continuation line, and
    unfolding (dropping the CRLF) gives back the exact text."""
    lines = []
    current = pieces[0]
    for piece in pieces[1:]:
        if len(current) + len(piece) > _SOFT_LIMIT:
            lines.append(current)
            current = piece
        else:
            current += piece
    lines.append(current)
    return _CRLF.join(lines)
