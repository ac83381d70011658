"""The sender replicas alive now and which of them owns an account (rendezvous hashing): each
replica subscribes first to the accounts it owns and to the rest a little later, as standby,
and hands an account back to its owner once the owner has been seen long enough."""

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog

from services.sender import store

log = structlog.get_logger(__name__)

HEARTBEAT_S = 5.0
# A replica seen this long (its own accounts subscribed) gets back the accounts that
# rendezvous hashing gives it from the replica that stood in while it was away.
HAND_BACK_AFTER_S = 10.0


def rendezvous_owner(account_id: str, replicas: list[str]) -> str | None:
    def score(replica: str) -> bytes:
        return hashlib.sha256(f"{replica}/{account_id}".encode()).digest()
    return max(replicas, key=score) if replicas else None


@dataclass(frozen=True)
class Seen:
    """The replicas alive at one look, as one reconcile uses them throughout."""
    me: str
    live: list[str]
    settled: list[str]  # of them, those seen for HAND_BACK_AFTER_S (and this one)

    def owner(self, account_id: str) -> str | None:
        return rendezvous_owner(account_id, self.live)

    def hands_back(self, worker: Any) -> bool:
        """This replica is the active consumer of an account that another replica owns, one
        seen long enough to be subscribed to it."""
        if worker.consumer_tag is None or not worker.delivered:
            return False
        owner = self.owner(worker.account_id)
        return owner != self.me and owner in self.settled


class Replicas:
    def __init__(self, pool: Any, me: str) -> None:
        self._pool = pool
        self.me = me
        self._first_seen: dict[str, float] = {}  # replica -> when this one first saw it live

    async def heartbeat(self) -> None:
        await store.heartbeat(self._pool, self.me)

    async def heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self.heartbeat()
            except Exception:
                log.exception("heartbeat failed")

    async def leave(self) -> None:
        await store.leave(self._pool, self.me)

    async def look(self) -> Seen:
        """Who is alive now, and since when this replica has seen each."""
        live = await store.live_replicas(self._pool, timedelta(seconds=HEARTBEAT_S * 3))
        now = asyncio.get_running_loop().time()
        self._first_seen = {r: self._first_seen.get(r, now) for r in live}
        settled = [r for r in live
                   if r == self.me or now - self._first_seen[r] >= HAND_BACK_AFTER_S]
        return Seen(self.me, live, settled)
