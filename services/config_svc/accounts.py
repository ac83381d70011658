"""What can be done with mail accounts, and who may do it (the service layer of the API)."""

from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from services.config_svc import repository
from services.config_svc.account_testmail import AccountTestMail, TestMailConfig
from services.config_svc.checks import check_standbys, checked_fields, checked_row
from services.config_svc.errors import (
    Conflict,
    Invalid,
    NotFound,
    require_admin,
    unique_violation,
)
from services.config_svc.queues import AccountQueues
from services.config_svc.rules import FieldError
from services.config_svc.schemas import (
    AccountFields,
    AccountOut,
    AccountPage,
    AccountPatch,
    AccountRow,
)
from shared.auth import User
from shared.crypto import SecretBox
from shared.messages import (
    AccountCreated,
    AccountDeleted,
    AccountPaused,
    AccountResumed,
    AccountUpdated,
)

log = structlog.get_logger(__name__)

# Fields that may not be set to null by a PATCH (they have no "empty" meaning).
_NOT_NULL = ("name", "personal", "from_address", "smtp_host", "smtp_port", "smtp_auth",
             "pop_before_smtp", "tls", "send_interval_ms", "is_default", "standby_account_ids",
             "allowed_from", "bounce_tls", "bounce_poll_s")
_PASSWORDS = repository.SECRETS


def _visible(row: Any, user: User) -> bool:
    return user.is_admin or not row["personal"] or row["owner"] == user.sub


def _out(row: Any, warnings: list[str] | None = None) -> AccountOut:
    public = repository.to_public(row)
    return AccountOut(
        **public.model_dump(), smtp_password_set=row["smtp_password_enc"] is not None,
        pop_password_set=row["pop_password_enc"] is not None,
        bounce_password_set=row["bounce_password_enc"] is not None, warnings=warnings or [],
    )


class AccountService:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox, queues: AccountQueues,
                 events_written: Callable[[], None], test_mail: TestMailConfig) -> None:
        self._pool = pool
        self._box = box
        self._queues = queues
        self._events_written = events_written
        self.test_mails = AccountTestMail(pool, box, test_mail)

    async def create(self, fields: AccountFields, user: User) -> AccountOut:
        require_admin(user)
        warnings = checked_fields(fields)
        values = {**fields.model_dump(exclude=set(_PASSWORDS)),
                  "owner": user.sub if fields.personal else None}
        for field, column in _PASSWORDS.items():
            secret = getattr(fields, field)
            values[column] = self._box.encrypt(secret.get_secret_value()) if secret else None
        try:
            async with self._pool.acquire() as db, db.transaction():
                if fields.is_default:
                    await self._clear_default(db, None, user)
                await check_standbys(db, None, values.get("standby_account_ids") or [],
                                     values.get("owner"))
                row = await repository.insert(db, values, created_by=user.sub)
                public = repository.to_public(row)
                await repository.add_event(
                    db, AccountCreated(account_id=public.id, account=public))
                # Declared before the commit: an account never exists without its queue.
                await self._queues.declare(public.id)
        except asyncpg.UniqueViolationError as error:
            raise unique_violation(error) from None
        self._events_written()
        log.info("account created", account_id=public.id, by=user.sub)
        return _out(row, warnings)

    async def update(self, account_id: str, patch: AccountPatch, user: User) -> AccountOut:
        require_admin(user)
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
                await check_standbys(db, account_id, values.get(
                    "standby_account_ids", current["standby_account_ids"]) or [], owner)
                if values.get("is_default") and not current["is_default"]:
                    await self._clear_default(db, account_id, user)
                row = await repository.update(db, account_id, values, updated_by=user.sub)
                public = repository.to_public(row)
                await repository.add_event(
                    db, AccountUpdated(account_id=public.id, account=public))
        except asyncpg.UniqueViolationError as error:
            raise unique_violation(error) from None
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
        return values, checked_row(merged)

    async def _clear_default(self, db: asyncpg.Connection, except_id: str | None,
                             user: User) -> None:
        for previous in await repository.clear_default(db, except_id, user.sub):
            public = repository.to_public(previous)
            await repository.add_event(db, AccountUpdated(account_id=public.id, account=public))

    async def delete(self, account_id: str, force: bool, user: User) -> None:
        require_admin(user)
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
        require_admin(user)
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
