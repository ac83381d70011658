"""Everything checked before a delivery is stored: the account, the headers, the addresses
and the placeholders. One recipient that cannot be served refuses the whole request, before
anything is sent."""

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header
from typing import Any

from services.dispatcher.rejection import (
    ACCOUNT_NOT_PERMITTED,
    INVALID_REQUEST,
    MISSING_PLACEHOLDER,
    UNKNOWN_ACCOUNT,
    Rejection,
)
from shared.addresses import check_address
from shared.messages import DeliveryRequest, Recipient
from shared.templating import Template, missing_names, recipient_values

_ALLOWED_HEADER = re.compile(r"X-[A-Za-z0-9-]+|List-Unsubscribe|List-Unsubscribe-Post",
                             re.IGNORECASE)
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
# Line breaks and every other control character (TAB aside), as the composer refuses them too:
# C0, DEL, C1 (NEL among them), and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class PreparedDelivery:
    request: DeliveryRequest
    account_id: str
    recipients: list[Recipient]  # valid, normalised, each address once


def account_uuid(account_id: str | None) -> str | None:
    """Account ids are UUIDs; any other string names no account."""
    if account_id is None:
        return None
    try:
        return str(uuid.UUID(account_id))
    except ValueError:
        return None


def one_line(value: str) -> bool:
    """No line break or control character, and no line break hidden in an RFC 2047 encoded
    word: Python 3.11's email package before the CVE-2024-6923 fix writes such a word out as
    a real header line."""
    if _CONTROL.search(value):
        return False
    for word in _ENCODED_WORD.findall(value):
        try:
            decoded = b"".join(
                part if isinstance(part, bytes) else part.encode()
                for part, _charset in decode_header(word)
            )
        except (ValueError, HeaderParseError):  # undecodable: sent as the literal text
            continue
        if b"\r" in decoded or b"\n" in decoded:
            return False
    return True


def check_account(request: DeliveryRequest, account: Mapping[str, Any] | None) -> str:
    if account is None:
        wanted = request.account_id or "the default account"
        raise Rejection(UNKNOWN_ACCOUNT, f"no account {wanted} (unknown or deleted)",
                        request.delivery_id)
    if account["personal"] and request.requested_by != account["owner"]:
        raise Rejection(ACCOUNT_NOT_PERMITTED,
                        f"account {account['id']} is personal: only its owner may use it",
                        request.delivery_id)
    return str(account["id"])


def check_headers(request: DeliveryRequest) -> None:
    if not one_line(request.subject):
        raise Rejection(INVALID_REQUEST, "subject: a line break (also inside an encoded word) "
                        "is not allowed", request.delivery_id)
    seen: set[str] = set()
    for name, value in request.headers.items():
        if not _ALLOWED_HEADER.fullmatch(name):
            raise Rejection(INVALID_REQUEST, f"headers: {name!r} is not allowed (only X-*, "
                            "List-Unsubscribe, List-Unsubscribe-Post)", request.delivery_id)
        if name.lower() in seen:
            raise Rejection(INVALID_REQUEST, f"headers: {name} is given twice",
                            request.delivery_id)
        seen.add(name.lower())
        if not one_line(value):
            raise Rejection(INVALID_REQUEST, f"headers: the value of {name} has a line break",
                            request.delivery_id)


def prepare(request: DeliveryRequest, account: Mapping[str, Any] | None) -> PreparedDelivery:
    account_id = check_account(request, account)
    check_headers(request)
    subject = Template.parse(request.subject, html=False)
    used = subject.names
    for body, html in ((request.text, False), (request.html, True)):
        if body is not None:
            used = used | Template.parse(body, html=html).names

    seen: set[str] = set()
    recipients: list[Recipient] = []
    for index, recipient in enumerate(request.recipients):
        where = f"recipients[{index}]"
        try:
            email = check_address(recipient.email)
        except ValueError as error:
            raise Rejection(INVALID_REQUEST, f"{where}.email: {error}",
                            request.delivery_id) from None
        if recipient.name is not None and not one_line(recipient.name):
            raise Rejection(INVALID_REQUEST, f"{where}.name: a line break is not allowed",
                            request.delivery_id)
        values = recipient_values(email, recipient.name, recipient.vars)
        missing = missing_names(used, values)
        if missing:
            names = ", ".join("{{" + name + "}}" for name in sorted(missing))
            raise Rejection(MISSING_PLACEHOLDER, f"{where} cannot fill {names}",
                            request.delivery_id)
        for name in subject.names:
            if not one_line(values[name]):
                raise Rejection(INVALID_REQUEST, f"{where}: the value of {{{{{name}}}}} goes "
                                "into the subject and has a line break", request.delivery_id)
        local, _, domain = email.rpartition("@")
        key = f"{local}@{domain.lower()}"
        if key in seen:
            continue  # the same address twice in one request is sent once
        seen.add(key)
        # The request's own object when nothing changed: 100,000 copies cost ~30 MB.
        recipients.append(recipient if email == recipient.email else Recipient(
            email=email, name=recipient.name, vars=recipient.vars))
    return PreparedDelivery(request, account_id, recipients)
