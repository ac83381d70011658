"""The checks a write or a test mail runs first: the rules across fields (rules.py) on the
account as it would be, and its standby accounts against the table."""

from collections.abc import Mapping
from typing import Any

import asyncpg

from services.config_svc.errors import Invalid
from services.config_svc.repository import SECRETS
from services.config_svc.rules import FieldError, check_account
from services.config_svc.schemas import AccountFields, UnsavedTestMail


def checked_fields(fields: AccountFields | UnsavedTestMail) -> list[str]:
    """The warnings of the fields sent; raises Invalid when the rules refuse them."""
    return checked({**fields.model_dump(exclude=set(SECRETS)),
                    **{f"{field}_set": getattr(fields, field) is not None for field in SECRETS}})


def checked_row(merged: Mapping[str, Any]) -> list[str]:
    """The same for the columns of an account as a change would leave them."""
    return checked({**merged, **{f"{field}_set": merged[column] is not None
                                 for field, column in SECRETS.items()}})


def checked(account: Mapping[str, Any]) -> list[str]:
    errors, warnings = check_account(account)
    if errors:
        raise Invalid(errors)
    return warnings


async def check_standbys(db: asyncpg.Connection, account_id: str | None,
                         standbys: list[str], owner: str | None) -> None:
    """Live accounts, not the account itself, each once; for a personal account only the same
    owner's personal accounts (its mail never goes out in someone else's name)."""
    if not standbys:
        return
    errors = []
    if account_id in standbys:
        errors.append("an account cannot stand in for itself")
    if len(set(standbys)) != len(standbys):
        errors.append("each standby account once")
    rows = {str(row["id"]): row for row in await db.fetch(
        "SELECT id, personal, owner FROM accounts WHERE id = ANY($1::uuid[]) "
        "AND deleted_at IS NULL", standbys)}
    for standby in standbys:
        row = rows.get(standby)
        if row is None and standby != account_id:
            errors.append(f"no account {standby}")
        elif row is not None and owner is not None and row["owner"] != owner:
            errors.append(f"{standby} is not an account of the same owner (this one is "
                          "personal)")
    if errors:
        raise Invalid([FieldError("standby_account_ids", "; ".join(errors))])
