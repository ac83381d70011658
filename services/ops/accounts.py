"""Account status for operators, and pause/resume with the same effect as config_svc's API."""

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection

from services.config_svc import ops_api
from services.ops.errors import OpsError
from shared.auth import ADMIN_ROLE, User
from shared.topology import Topology

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AccountStatus:
    id: str
    name: str
    is_default: bool
    personal: bool
    paused: bool
    # The sender's reason (auth, tls, sender_refused, pop, connect), or `operator` when the
    # account is paused by an operator (the API or this CLI) and not by the sender.
    paused_reason: str | None
    paused_at: datetime | None
    last_error: str | None  # the server's words that made the sender pause it
    send_interval_ms: int  # the configured pace
    throttled_interval_ms: int | None  # the pace in force after throttling; None: configured
    last_send: datetime | None  # end of the account's last SMTP transaction
    queue_depth: int | None  # messages ready in its queue; None: the broker refused to say
    queue_error: str | None = None
    # Per window with a quota: {"limit": N, "used": n} (accepted messages in the window now).
    quotas: dict[str, dict[str, int]] = field(default_factory=dict)
    resumes_at: datetime | None = None  # a quota pause ends then

    def as_json(self) -> dict[str, Any]:
        return {key: value.isoformat() if isinstance(value, datetime) else value
                for key, value in asdict(self).items()}


def check_account_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise OpsError(f"not an account id (a UUID): {value!r}") from None


async def list_accounts(pool: asyncpg.Pool, connection: AbstractConnection, topology: Topology,
                        account_ids: Sequence[str] = ()) -> list[AccountStatus]:
    """Live accounts (all, or those named), with their queue depth asked of the broker now.

    The depth comes from a passive declare, which needs no permission on the queue and
    creates nothing; a missing queue is reported as such."""
    ids = [check_account_id(value) for value in account_ids] or None
    try:
        rows = await ops_api.account_statuses(pool, ids)
    except asyncpg.UndefinedTableError as error:
        raise OpsError(f"the database lacks a table ({error}); run the migrations first") from None
    if ids is not None:
        missing = set(ids) - {str(row["id"]) for row in rows}
        if missing:
            raise OpsError(f"no live account {', '.join(sorted(missing))}")
    statuses = []
    channel: AbstractChannel | None = None
    try:
        for row in rows:
            if channel is None or channel.is_closed:
                channel = await connection.channel()
            account_id = str(row["id"])
            depth, error = None, None
            try:
                underlay = await channel.get_underlay_channel()
                declared = await underlay.queue_declare(
                    topology.account_queue(account_id), passive=True)
                depth = declared.message_count or 0
            except Exception as failure:  # no queue: the broker closed this channel

                error = f"{type(failure).__name__}: {failure}"
            paused_reason = row["paused_reason"] or ("operator" if row["paused"] else None)
            statuses.append(AccountStatus(
                id=account_id, name=row["name"], is_default=row["is_default"],
                personal=row["personal"], paused=row["paused"] or row["paused_reason"] is not None,
                paused_reason=paused_reason, paused_at=row["paused_at"],
                last_error=row["paused_detail"], send_interval_ms=row["send_interval_ms"],
                throttled_interval_ms=row["interval_ms"], last_send=row["last_end"],
                queue_depth=depth, queue_error=error, resumes_at=row["resumes_at"],
                quotas={window: {"limit": row[f"quota_per_{window}"], "used": row[window]}
                        for window in ("minute", "hour", "day")
                        if row[f"quota_per_{window}"] is not None},
            ))
    finally:
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()
    return statuses


@dataclass(frozen=True)
class PauseResult:
    account_id: str
    name: str
    paused: bool
    changed: bool  # False: it already was in that state (no event is written then)
    by: str
    events_published: int  # account events the outbox relay published (any account's)


async def set_paused(pool: asyncpg.Pool, connection: AbstractConnection, topology: Topology,
                     account_id: str, paused: bool, login: str,
                     keys: Sequence[str] = ()) -> PauseResult:
    """What `POST /v1/accounts/{id}/pause` (or `/resume`) does, as the administrator
    `cli:<login>`: `accounts.paused` and the account event in one transaction (the outbox);
    then the waiting account events are published at once."""
    account_id = check_account_id(account_id)
    user = User(sub=f"cli:{login}", roles=frozenset({ADMIN_ROLE}))
    change = await ops_api.set_paused(pool, connection, topology, account_id, paused, user,
                                      keys)
    if change is None:
        raise OpsError(f"no live account {account_id}")
    return PauseResult(account_id=account_id, name=change.name, paused=change.paused,
                       changed=change.changed, by=user.sub,
                       events_published=change.events_published)
