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

from services.config_svc import repository
from services.config_svc.accounts import AccountService, NotFound, TestMailConfig
from services.config_svc.queues import AccountQueues
from shared.auth import ADMIN_ROLE, User
from shared.crypto import SecretBox
from shared.outbox import OutboxRelay
from shared.smtp import client_ssl_context
from shared.topology import Topology, open_confirmed_channel, open_transaction_channel

log = structlog.get_logger(__name__)


class OpsError(Exception):
    """A refusal or failure to print to the operator (exit code 1), never a traceback."""


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


_STATUS = """
SELECT a.id, a.name, a.is_default, a.personal, a.paused, a.send_interval_ms,
       r.paused_reason, r.paused_at, r.paused_detail, r.interval_ms, r.last_end, r.resumes_at,
       a.quota_per_minute, a.quota_per_hour, a.quota_per_day,
       (SELECT count(*) FILTER (WHERE s.at > now() - interval '1 minute') AS minute
        FROM account_sends s WHERE s.account_id = a.id AND s.at > now() - interval '1 day'),
       (SELECT count(*) FILTER (WHERE s.at > now() - interval '1 hour') AS hour
        FROM account_sends s WHERE s.account_id = a.id AND s.at > now() - interval '1 day'),
       (SELECT count(*) AS day
        FROM account_sends s WHERE s.account_id = a.id AND s.at > now() - interval '1 day')
FROM accounts a LEFT JOIN account_runtime r ON r.account_id = a.id
WHERE a.deleted_at IS NULL AND ($1::uuid[] IS NULL OR a.id = ANY($1::uuid[]))
ORDER BY a.is_default DESC, a.name
"""


async def list_accounts(pool: asyncpg.Pool, connection: AbstractConnection, topology: Topology,
                        account_ids: Sequence[str] = ()) -> list[AccountStatus]:
    """Live accounts (all, or those named), with their queue depth asked of the broker now.

    The depth comes from a passive declare, which needs no permission on the queue and
    creates nothing; a missing queue is reported as such."""
    ids = [check_account_id(value) for value in account_ids] or None
    try:
        rows = await pool.fetch(_STATUS, ids)
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
    then one drain of the outbox, so that the event goes out now even when no config_svc runs
    (a running one may publish it first: the outbox rows are locked, never sent twice)."""
    account_id = check_account_id(account_id)
    user = User(sub=f"cli:{login}", roles=frozenset({ADMIN_ROLE}))
    before = await repository.get(pool, account_id)
    if before is None:
        raise OpsError(f"no live account {account_id}")
    channel = await open_confirmed_channel(connection)
    relay_channel = await open_transaction_channel(connection)
    try:
        # Pausing touches no secret; the box is only there because the service needs one.
        box = SecretBox(list(keys) or [SecretBox.generate_key()])
        service = AccountService(pool, box, AccountQueues(channel, topology), lambda: None,
                                 TestMailConfig(client_ssl_context(), timeout_s=10))
        try:
            account = await service.set_paused(account_id, paused, user)
        except NotFound:
            raise OpsError(f"no live account {account_id}") from None
        published = await OutboxRelay(pool, relay_channel, topology, table="account_outbox",
                                      poll_s=1).drain()
    finally:
        for opened in (channel, relay_channel):
            with contextlib.suppress(Exception):
                await opened.close()
    return PauseResult(account_id=account_id, name=account.name, paused=account.paused,
                       changed=before["paused"] != paused, by=user.sub,
                       events_published=published)
