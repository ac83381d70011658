"""Checks of mail addresses and host names, shared by every service that accepts them."""

import re
import unicodedata

from email_validator import EmailNotValidError, validate_email

_HOST_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_address(value: str) -> str:
    """A bare address (international allowed): no display name, quoted local part, IP literal,
    CR/LF or invisible characters. Returns it normalised; raises ValueError saying why."""
    if any(unicodedata.category(ch) == "Cf" for ch in value):
        raise ValueError("contains an invisible (zero-width or format) character")
    try:
        result = validate_email(
            value, check_deliverability=False, allow_smtputf8=True, allow_quoted_local=False,
            allow_domain_literal=False, allow_display_name=False,
        )
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None
    return result.normalized


def check_host(value: str) -> str:
    """A server name or address: no whitespace or control characters (CR, LF, NUL)."""
    if not value or len(value) > 253 or _HOST_FORBIDDEN.search(value):
        raise ValueError("must be a host name or address, without spaces or control characters")
    return value


def check_hostname(value: str) -> str:
    """A strict DNS host name, as given in EHLO."""
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError("must be a valid host name (letters, digits, hyphens, dots)")
    return value
