"""What a sender's supervisor and every account worker share, built once in `main`."""

import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aio_pika.abc import AbstractChannel

from services.sender.bounces.verp import Verp
from services.sender.delivery.compose import Composer
from services.sender.delivery.pacer import Clock
from services.sender.delivery.ports import SendStore, Sessions
from services.sender.delivery.recorder import DatabaseHealth
from services.sender.settings import SenderSettings
from shared.accounts import smtp_endpoint
from shared.crypto import SecretBox
from shared.smtp import SmtpSession
from shared.topology import Topology


class Composers:
    """Per-delivery composers (the parts common to a delivery built once), most recent kept."""

    def __init__(self, db: Any, size: int = 1024) -> None:
        self._db = db  # a SendStore
        self._size = size
        self._cache: OrderedDict[str, tuple[Composer, dict]] = OrderedDict()

    async def get(self, delivery_id: str, account: Any) -> tuple[Composer, dict]:
        # Per account too: a standby composes with the From of the account it stands in for.
        key = f"{delivery_id}:{account['id']}:{account['updated_at']}"
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        content, metadata = await self._db.content(delivery_id, account)
        entry = (Composer(content), metadata)
        self._cache[key] = entry
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return entry


@dataclass(frozen=True)
class SenderParts:
    pool: asyncpg.Pool
    settings: SenderSettings
    box: SecretBox
    ssl_context: ssl.SSLContext
    topology: Topology
    publish_channel: AbstractChannel  # jobs put back, retried or dead-lettered (confirmed)
    composers: Composers
    wake_events: Callable[[], None]  # the outbox relay's: events were committed
    database: DatabaseHealth
    verp: Verp  # envelope senders of accounts with a bounce_address
    store: SendStore  # the send path's database
    sessions: Sessions  # an account's SMTP session
    clock: Clock = field(default_factory=Clock)


class SmtpSessions:
    """Sessions of the accounts' stored settings, secrets decrypted."""

    def __init__(self, box: SecretBox, ssl_context: ssl.SSLContext,
                 settings: SenderSettings) -> None:
        self._box = box
        self._ssl_context = ssl_context
        self._settings = settings

    def __call__(self, account: Any, probe: bool) -> SmtpSession:
        endpoint = smtp_endpoint(account, self._box)  # raises UndecryptableSecret
        if probe:
            return SmtpSession(endpoint, ssl_context=self._ssl_context,
                               timeout_s=self._settings.smtp_timeout_s)
        return SmtpSession(endpoint, ssl_context=self._ssl_context,
                           timeout_s=self._settings.smtp_timeout_s,
                           pop_max_age_s=self._settings.pop_max_age_s)
