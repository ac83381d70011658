"""Checks across the fields of an account, run on the account as it would be saved."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

VERP_LOCAL_MAX = 64 - 1 - 32  # local + "+" + the token (services/sender/bounces/verp.py)


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


def check_account(account: Mapping[str, Any]) -> tuple[list[FieldError], list[str]]:
    """Errors that refuse the account, and warnings that accept it but must be said.

    `account` holds the merged fields, with `smtp_password_set` / `pop_password_set` in
    place of the passwords.
    """
    errors: list[FieldError] = []
    warnings: list[str] = []

    if account["smtp_auth"]:
        if not account.get("smtp_username"):
            errors.append(FieldError("smtp_username", "required when smtp_auth is true"))
        if not account.get("smtp_password_set"):
            errors.append(FieldError("smtp_password", "required when smtp_auth is true"))
    if account["pop_before_smtp"]:
        for field in ("pop_host", "pop_port", "pop_username"):
            if not account.get(field):
                errors.append(FieldError(field, "required when pop_before_smtp is true"))
        if not account.get("pop_password_set"):
            errors.append(FieldError("pop_password", "required when pop_before_smtp is true"))
    if account.get("bounce_protocol"):
        for field in ("bounce_host", "bounce_username"):
            if not account.get(field):
                errors.append(FieldError(field, "required when bounce_protocol is set"))
        if not account.get("bounce_password_set"):
            errors.append(FieldError("bounce_password", "required when bounce_protocol is set"))
        if account.get("bounce_tls") == "none":
            warnings.append("bounce_tls is none: the bounce mailbox's login and password will "
                            "cross the network unencrypted")
    verp_local = (account.get("bounce_address") or "").partition("@")[0]
    if "+" in verp_local:
        # Each mail's envelope sender is local+<token>@domain: a second + is ambiguous.
        errors.append(FieldError("bounce_address", "the local part may not hold a '+'"))
    elif len(verp_local) > VERP_LOCAL_MAX:
        errors.append(FieldError(
            "bounce_address", f"the local part may have at most {VERP_LOCAL_MAX} characters "
            "(with '+' and the 32 of the token, an address's local part is at most 64)"))
    if account["personal"] and account["is_default"]:
        errors.append(FieldError(
            "is_default", "a personal account cannot be the system default account"))

    port, tls = account["smtp_port"], account["tls"]
    if port == 465 and tls == "starttls":
        warnings.append("smtp_port 465 usually expects implicit TLS (tls: ssl), not starttls")
    if port == 587 and tls == "ssl":
        warnings.append("smtp_port 587 usually expects tls: starttls, not implicit TLS (ssl)")
    if tls == "none" and (account["smtp_auth"] or account["pop_before_smtp"]):
        warnings.append(
            "tls is none: the login and password will cross the network unencrypted")
    return errors, warnings
