"""The service layer's refusals, each with the HTTP status the API answers with."""

from typing import Any

import asyncpg

from services.config_svc.rules import FieldError
from shared.auth import User


class AccountError(Exception):
    status = 400

    def __init__(self, detail: Any) -> None:
        super().__init__(str(detail))
        self.detail = detail


class NotFound(AccountError):
    status = 404


class Forbidden(AccountError):
    status = 403


class Conflict(AccountError):
    status = 409


class Invalid(AccountError):
    status = 422

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__([
            {"loc": ["body", e.field], "msg": f"{e.field}: {e.message}", "type": "value_error"}
            for e in errors
        ])


def require_admin(user: User) -> None:
    if not user.is_admin:
        raise Forbidden("only mail administrators (role mail-admin) may do this")


def unique_violation(error: asyncpg.UniqueViolationError) -> AccountError:
    if error.constraint_name == "accounts_name_key":
        return Invalid([FieldError("name", "an account with this name already exists")])
    return Conflict("another account became the default at the same time; try again")
