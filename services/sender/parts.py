"""What a sender's supervisor and every account worker share, built once in `main`."""

import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aio_pika.abc import AbstractChannel

from services.sender import store
from services.sender.bounces.verp import Verp
from services.sender.delivery.compose import Composer
from services.sender.delivery.recorder import DatabaseHealth
from services.sender.settings import SenderSettings
from shared.crypto import SecretBox
from shared.topology import EventPublisher, Topology


class Composers:
    """Per-delivery composers (the parts common to a delivery built once), most recent kept."""

    def __init__(self, pool: asyncpg.Pool, size: int = 1024) -> None:
        self._pool = pool
        self._size = size
        self._cache: OrderedDict[str, tuple[Composer, dict]] = OrderedDict()

    async def get(self, delivery_id: str, account: Any) -> tuple[Composer, dict]:
        # Per account too: a standby composes with the From of the account it stands in for.
        key = f"{delivery_id}:{account['id']}:{account['updated_at']}"
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        content, metadata = await store.content(self._pool, delivery_id, account)
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
    events: EventPublisher  # events published at once (republished copies, throttling)
    publish_channel: AbstractChannel  # jobs put back, retried or dead-lettered (confirmed)
    composers: Composers
    wake_events: Callable[[], None]  # the outbox relay's: events were committed
    database: DatabaseHealth
    verp: Verp  # envelope senders of accounts with a bounce_address
