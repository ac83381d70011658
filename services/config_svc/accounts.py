"""What can be done with mail accounts, and who may do it (the service layer of the API)."""

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from services.config_svc import repository
from services.config_svc.queues import AccountQueues
from services.config_svc.rules import FieldError, check_account
from services.config_svc.schemas import (
    AccountFields,
    AccountOut,
    AccountPage,
    AccountPatch,
    AccountRow,
    UnsavedTestMail,
)
from services.config_svc.testmail import TestMailReport, run_test_mail
from shared.accounts import smtp_endpoint
from shared.auth import User
from shared.crypto import SecretBox
from shared.messages import (
    AccountCreated,
    AccountDeleted,
    AccountPaused,
    AccountResumed,
    AccountUpdated,
)
from shared.smtp import PopLogin, SmtpEndpoint

log = structlog.get_logger(__name__)

# Fields that may not be set to null by a PATCH (they have no "empty" meaning).
_NOT_NULL = ("name", "personal", "from_address", "smtp_host", "smtp_port", "smtp_auth",
             "pop_before_smtp", "tls", "send_interval_ms", "is_default", "standby_account_ids",
             "allowed_from", "bounce_tls", "bounce_poll_s")
_PASSWORDS = repository.SECRETS


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


@dataclass(frozen=True)
class TestMailConfig:
    ssl_context: ssl.SSLContext
    timeout_s: float


def _require_admin(user: User) -> None:
    if not user.is_admin:
        raise Forbidden("only mail administrators (role mail-admin) may do this")


def _visible(row: Any, user: User) -> bool:
    return user.is_admin or not row["personal"] or row["owner"] == user.sub


def _out(row: Any, warnings: list[str] | None = None) -> AccountOut:
    public = repository.to_public(row)
    return AccountOut(
        **public.model_dump(), smtp_password_set=row["smtp_password_enc"] is not None,
        pop_password_set=row["pop_password_enc"] is not None,
        bounce_password_set=row["bounce_password_enc"] is not None, warnings=warnings or [],
    )


def _unique_violation(error: asyncpg.UniqueViolationError) -> AccountError:
    if error.constraint_name == "accounts_name_key":
        return Invalid([FieldError("name", "an account with this name already exists")])
    return Conflict("another account became the default at the same time; try again")


async def _check_standbys(db: asyncpg.Connection, account_id: str | None,
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


class AccountService:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox, queues: AccountQueues,
                 events_written: Callable[[], None], test_mail: TestMailConfig) -> None:
        self._pool = pool
        self._box = box
        self._queues = queues
        self._events_written = events_written
        self._test_mail = test_mail

    async def create(self, fields: AccountFields, user: User) -> AccountOut:
        _require_admin(user)
        plain = fields.model_dump(exclude=set(_PASSWORDS))
        errors, warnings = check_account({
            **plain,
            "smtp_password_set": fields.smtp_password is not None,
            "pop_password_set": fields.pop_password is not None,
            "bounce_password_set": fields.bounce_password is not None,
        })
        if errors:
            raise Invalid(errors)
        values = {**plain, "owner": user.sub if fields.personal else None}
        for field, column in _PASSWORDS.items():
            secret = getattr(fields, field)
            values[column] = self._box.encrypt(secret.get_secret_value()) if secret else None
        try:
            async with self._pool.acquire() as db, db.transaction():
                if fields.is_default:
                    await self._clear_default(db, None, user)
                await _check_standbys(db, None, values.get("standby_account_ids") or [],
                                      values.get("owner"))
                row = await repository.insert(db, values, created_by=user.sub)
                public = repository.to_public(row)
                await repository.add_event(
                    db, AccountCreated(account_id=public.id, account=public))
                # Declared before the commit: an account never exists without its queue.
                await self._queues.declare(public.id)
        except asyncpg.UniqueViolationError as error:
            raise _unique_violation(error) from None
        self._events_written()
        log.info("account created", account_id=public.id, by=user.sub)
        return _out(row, warnings)

    async def update(self, account_id: str, patch: AccountPatch, user: User) -> AccountOut:
        _require_admin(user)
        changes = patch.model_dump(exclude_unset=True)
        nulls = [FieldError(f, "may not be null") for f in _NOT_NULL
                 if f in changes and changes[f] is None]
        if nulls:
            raise Invalid(nulls)
        try:
            async with self._pool.acquire() as db, db.transaction():
                current = await repository.get(db, account_id, for_update=True)
                if current is None:
                    raise NotFound(f"no account {account_id}")
                values, warnings = self._merge(current, patch, changes)
                owner = values.get("owner", current["owner"])
                await _check_standbys(db, account_id, values.get(
                    "standby_account_ids", current["standby_account_ids"]) or [], owner)
                if values.get("is_default") and not current["is_default"]:
                    await self._clear_default(db, account_id, user)
                row = await repository.update(db, account_id, values, updated_by=user.sub)
                public = repository.to_public(row)
                await repository.add_event(
                    db, AccountUpdated(account_id=public.id, account=public))
        except asyncpg.UniqueViolationError as error:
            raise _unique_violation(error) from None
        self._events_written()
        log.info("account updated", account_id=account_id, by=user.sub, fields=sorted(changes))
        return _out(row, warnings)

    def _merge(self, current: Any, patch: AccountPatch,
               changes: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The columns to write, after checking the account as it would then be."""
        values = {k: v for k, v in changes.items() if k not in _PASSWORDS}
        merged = {**{k: current[k] for k in repository.WRITABLE}, **values}
        if "personal" in values:
            values["owner"] = current["created_by"] if values["personal"] else None
        for field, column in _PASSWORDS.items():
            if field in changes:  # sent: set (or clear with null); left out: kept
                secret = getattr(patch, field)
                values[column] = self._box.encrypt(secret.get_secret_value()) if secret else None
        merged.update({k: v for k, v in values.items() if k in _PASSWORDS.values()})
        errors, warnings = check_account({
            **merged,
            "smtp_password_set": merged["smtp_password_enc"] is not None,
            "pop_password_set": merged["pop_password_enc"] is not None,
            "bounce_password_set": merged["bounce_password_enc"] is not None,
        })
        if errors:
            raise Invalid(errors)
        return values, warnings

    async def _clear_default(self, db: asyncpg.Connection, except_id: str | None,
                             user: User) -> None:
        for previous in await repository.clear_default(db, except_id, user.sub):
            public = repository.to_public(previous)
            await repository.add_event(db, AccountUpdated(account_id=public.id, account=public))

    async def delete(self, account_id: str, force: bool, user: User) -> None:
        _require_admin(user)
        if await repository.get(self._pool, account_id) is None:
            raise NotFound(f"no account {account_id}")
        waiting = await self._queues.waiting(account_id)
        if waiting and not force:
            raise Conflict(
                f"{waiting} messages wait in the account's queue; delete with ?force=true "
                "to move them to mail.dead")
        async with self._pool.acquire() as db, db.transaction():
            row = await repository.soft_delete(db, account_id, user.sub)
            if row is None:
                raise NotFound(f"no account {account_id}")
            public = repository.to_public(row)
            await repository.add_event(db, AccountDeleted(account_id=public.id, account=public))
        self._events_written()
        moved = await self._queues.remove(account_id, reason="account_deleted")
        log.info("account deleted", account_id=account_id, by=user.sub, moved_to_dead=moved)

    async def set_paused(self, account_id: str, paused: bool, user: User) -> AccountOut:
        _require_admin(user)
        async with self._pool.acquire() as db, db.transaction():
            current = await repository.get(db, account_id, for_update=True)
            if current is None:
                raise NotFound(f"no account {account_id}")
            row = await repository.set_paused(db, account_id, paused, user.sub)
            if current["paused"] != paused:  # the event says that the state changed
                event = (AccountPaused(account_id=account_id, reason="operator") if paused
                         else AccountResumed(account_id=account_id))
                await repository.add_event(db, event)
        self._events_written()
        log.info("account paused" if paused else "account resumed", account_id=account_id,
                 by=user.sub)
        return _out(row)

    async def get(self, account_id: str, user: User) -> AccountOut:
        row = await repository.get(self._pool, account_id)
        if row is None or not _visible(row, user):
            raise NotFound(f"no account {account_id}")  # someone else's personal: not found
        out = _out(row)
        windows = [w for w in ("minute", "hour", "day") if row[f"quota_per_{w}"] is not None]
        if windows:
            out = out.model_copy(update={"quota_used": await repository.quota_used(
                self._pool, account_id, windows)})
        return out

    async def search(self, q: str | None, match_all: bool, limit: int, offset: int,
                     user: User) -> AccountPage:
        words = (q or "").split()
        rows, total = await repository.search(
            self._pool, words, match_all, None if user.is_admin else user.sub, limit, offset)
        items = [AccountRow(**{**repository.to_public(r).model_dump()}) for r in rows]
        return AccountPage(items=items, total=total, limit=limit, offset=offset)

    async def states(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """For the screens: per account, the sender's pause reason (and when a quota pause
        ends), the pace in force after throttling, and the jobs waiting in its queues."""
        runtime = await repository.runtime_states(self._pool, ids)
        try:
            depths: dict[str, int] = await self._queues.waiting_in(ids)
        except Exception:  # the broker away: the list still shows
            depths = {}
        found: dict[str, dict[str, Any]] = {}
        for account_id in ids:
            row = runtime.get(account_id)
            waiting = depths.get(account_id)
            found[account_id] = {
                "reason": row["paused_reason"] if row else None,
                "detail": row["paused_detail"] if row else None,  # the server's words
                "resumes_at": row["resumes_at"] if row else None,
                "throttled_ms": row["interval_ms"] if row else None,
                "waiting": waiting,
            }
        return found

    async def test_saved(self, account_id: str, to: str, lang: str,
                         user: User) -> TestMailReport:
        _require_admin(user)
        row = await repository.get(self._pool, account_id)
        if row is None:
            raise NotFound(f"no account {account_id}")
        return await run_test_mail(
            smtp_endpoint(row, self._box), from_address=row["from_address"],
            from_name=row["from_name"], reply_to=row["reply_to"], to=to, lang=lang,
            ssl_context=self._test_mail.ssl_context, timeout_s=self._test_mail.timeout_s,
        )

    async def test_edited(self, account_id: str, values: dict[str, Any], lang: str,
                          user: User) -> TestMailReport:
        """A test mail on a saved account's form, changed or not: a password left empty
        there is the stored one."""
        _require_admin(user)
        row = await repository.get(self._pool, account_id)
        if row is None:
            raise NotFound(f"no account {account_id}")
        values = dict(values)
        for field, column in _PASSWORDS.items():
            if not values.get(field) and row[column]:
                values[field] = self._box.decrypt(row[column], account_id=account_id,
                                                  field=field)
        return await self.test_unsaved(UnsavedTestMail.model_validate(values), lang, user)

    async def test_unsaved(self, fields: UnsavedTestMail, lang: str,
                           user: User) -> TestMailReport:
        _require_admin(user)
        errors, _warnings = check_account({
            **fields.model_dump(exclude=set(_PASSWORDS)),
            "smtp_password_set": fields.smtp_password is not None,
            "pop_password_set": fields.pop_password is not None,
            "bounce_password_set": fields.bounce_password is not None,
        })
        if errors:
            raise Invalid(errors)
        pop = None
        if fields.pop_before_smtp:
            pop = PopLogin(host=fields.pop_host, port=fields.pop_port,
                           username=fields.pop_username,
                           password=fields.pop_password.get_secret_value())
        endpoint = SmtpEndpoint(
            host=fields.smtp_host, port=fields.smtp_port, tls=fields.tls,
            local_hostname=fields.local_hostname,
            username=fields.smtp_username if fields.smtp_auth else None,
            password=fields.smtp_password.get_secret_value() if fields.smtp_auth else None,
            pop=pop,
        )
        return await run_test_mail(
            endpoint, from_address=fields.from_address, from_name=fields.from_name,
            reply_to=fields.reply_to, to=fields.to, lang=lang,
            ssl_context=self._test_mail.ssl_context, timeout_s=self._test_mail.timeout_s,
        )

