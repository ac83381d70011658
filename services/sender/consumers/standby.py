"""Fail-over: the paused accounts whose jobs a standby account of this replica sends, while
they are paused (single active consumer: one replica's standby does)."""

from typing import Any

import structlog

from services.sender import store
from services.sender.consumers import failover

log = structlog.get_logger(__name__)


class Standbys:
    def __init__(self, pool: Any, consumers: Any) -> None:
        self._pool = pool
        self._consumers = consumers
        # Paused account -> (its standby, the standby's consumer on the paused one's queue).
        self.borrows: dict[str, tuple[str, Any, str]] = {}

    async def fail_over(self, rows: list[Any], workers: dict[str, Any]) -> None:
        """Each paused account (of the live `rows` reconciled) whose first usable standby is
        consumed here: that standby's worker consumes the paused account's queue too; when
        the account runs again, or the standby is no longer usable, it stops. Only accounts
        paused with standbys, and those failed over now, are read in full: a reconcile of
        thousands of running accounts reads no more."""
        homes = [str(row["id"]) for row in rows
                 if row["paused_reason"] in failover.FAILOVER_REASONS
                 and row["standby_account_ids"]]
        homes += [home for home in self.borrows if home not in homes]
        for home in homes:
            account, standby = await self._standby_of(home)
            worker = workers.get(standby) if standby else None
            if worker is None or worker.consumer_tag is None:
                standby = None  # not consumed here (another replica's turn)
            current = self.borrows.get(home)
            if current is not None and current[0] != standby:
                del self.borrows[home]
                await self._consumers.cancel(current[1], current[2])
                log.info("fail-over ended", account_id=home, standby_account_id=current[0])
            if standby is not None and home not in self.borrows:
                assert worker is not None and account is not None
                queue, tag = await self._consumers.consume(home, worker.standing_in(account))
                self.borrows[home] = (standby, queue, tag)
                log.warning("failing over to a standby account", account_id=home,
                            standby_account_id=standby, reason=account["paused_reason"])

    async def _standby_of(self, home: str) -> tuple[Any, str | None]:
        account = await store.account(self._pool, home)
        if account is None or account["deleted_at"] is not None:
            return account, None
        standbys = {standby_id: await store.account(self._pool, standby_id)
                    for standby_id in account["standby_account_ids"] or []}
        return account, failover.standby_for(account, standbys.get)

    async def standby_paused(self, standby: str) -> None:
        """A paused standby stands in for nobody."""
        for home, (borrower, queue, tag) in list(self.borrows.items()):
            if borrower == standby:
                del self.borrows[home]
                await self._consumers.cancel(queue, tag)

    def lost(self, home: str) -> None:
        """The consumer of `home`'s queue went with its channel or connection."""
        self.borrows.pop(home, None)
