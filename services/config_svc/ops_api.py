"""What the operators' command (services/ops) asks of config_svc: the accounts' status and
pause/resume with the API's effect, and rotate-keys. Its one way in, so that it depends on
neither the repository nor how the service is wired."""

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from aio_pika.abc import AbstractConnection
from pydantic import SecretStr

from services.config_svc import repository
from services.config_svc.accounts import AccountService, NotFound, TestMailConfig
from services.config_svc.queues import AccountQueues
from shared.auth import User
from shared.crypto import SecretBox
from shared.outbox import OutboxRelay
from shared.smtp import client_ssl_context
from shared.topology import Topology, open_confirmed_channel, open_transaction_channel

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


async def account_statuses(pool: asyncpg.Pool,
                           account_ids: list[str] | None) -> list[asyncpg.Record]:
    """Live accounts (all when `account_ids` is None), the default first, with the sender's
    view of each (`account_runtime`) and the messages accepted in each quota window now.
    Raises asyncpg.UndefinedTableError until every service's migrations ran."""
    return await pool.fetch(_STATUS, account_ids)


@dataclass(frozen=True)
class PauseChange:
    name: str
    paused: bool
    changed: bool  # False: it already was in that state (no event is written then)
    events_published: int  # account events the outbox relay published (any account's)


async def set_paused(pool: asyncpg.Pool, connection: AbstractConnection, topology: Topology,
                     account_id: str, paused: bool, user: User,
                     keys: Sequence[str] = ()) -> PauseChange | None:
    """`AccountService.set_paused`, then one drain of the account outbox, so that the event
    goes out now even when no config_svc runs (a running one may publish it first: the outbox
    rows are locked, never sent twice). None when there is no live account `account_id`."""
    before = await repository.get(pool, account_id)
    if before is None:
        return None
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
            return None
        published = await OutboxRelay(pool, relay_channel, topology, table="account_outbox",
                                      poll_s=1).drain()
    finally:
        for opened in (channel, relay_channel):
            with contextlib.suppress(Exception):
                await opened.close()
    return PauseChange(name=account.name, paused=account.paused,
                       changed=before["paused"] != paused, events_published=published)


async def rotate_keys(postgres_dsn: SecretStr, fernet_keys: SecretStr) -> int:
    """`python -m services.config_svc rotate-keys`: every stored password re-encrypted with
    the first key, in one transaction; returns how many accounts hold one. Raises ValueError
    or UndecryptableSecret when the keys cannot do it."""
    # Imported here: config_svc's command line brings its HTTP app along, which the other
    # commands of mail-ops have no use for.
    from services.config_svc.cli import rotate_keys as rotate
    from services.config_svc.settings import ConfigSettings

    return await rotate(ConfigSettings(postgres_dsn=postgres_dsn, fernet_keys=fernet_keys))
