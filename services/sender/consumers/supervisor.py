"""Which account queues this sender consumes, kept in line with the accounts table.

One consumer per live, running account, prefetch 1 each, about a hundred consumers a channel.
Account events are followed within a second; a periodic reconcile catches a missed one. With
several replicas, each subscribes first to the accounts that rendezvous hashing gives it and
to the rest a little later, as standby: single active consumer then spreads the active
consumers over the replicas, and a standby takes over when a replica dies.

The consumers have a connection of their own (`ConsumerChannels`); whatever of it is lost is
subscribed again from the accounts table, never from what was consumed before, so a deleted
account's queue is never brought back.
"""

import asyncio
import contextlib
from typing import Any

import structlog
from aio_pika.abc import AbstractConnection

from services.sender import metrics, store
from services.sender.consumers.account_events import AccountEvents
from services.sender.consumers.channels import ConsumerChannels
from services.sender.consumers.recovery import recover
from services.sender.consumers.replicas import Replicas, Seen
from services.sender.consumers.standby import Standbys
from services.sender.consumers.subscriber import Subscriber
from services.sender.consumers.timers import Timers
from services.sender.delivery.worker import AccountWorker
from services.sender.parts import SenderParts

log = structlog.get_logger(__name__)

STANDBY_DELAY_S = 2.0


class Supervisor:
    def __init__(self, connection: AbstractConnection, parts: SenderParts,
                 amqp_url: str) -> None:
        self._connection = connection  # robust: account events
        self._parts = parts
        self.pool = parts.pool
        settings = parts.settings
        self._consumers = ConsumerChannels(
            amqp_url, f"sender {settings.replica_id} consumers", parts.topology,
            settings.consumers_per_channel, self._lost)
        self.workers: dict[str, AccountWorker] = {}
        self._replicas = Replicas(parts.pool, settings.replica_id)
        self._standbys = Standbys(parts.pool, self._consumers)
        self._subscriber = Subscriber(parts.pool, self._consumers, self.workers,
                                      self.worker_for)
        self.timers = Timers(parts.pool, settings, self.worker_for,
                              lambda account_id: self.reconcile(only=account_id))
        self._wanted: set[str] = set()  # as of the last full reconcile
        self._recovery: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._pending_standby: set[str] = set()
        self.stopping = False
        self.started = False

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._replicas.heartbeat()
        events = await self._connection.channel()
        queue = await events.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._parts.topology.events_exchange, routing_key="account.*")
        await queue.consume(AccountEvents(self).on_message, no_ack=True)
        await self.reconcile()
        for name, loop in (("reconcile", self._reconcile_loop), ("idle", self._idle_loop),
                           ("heartbeat", self._replicas.heartbeat_forever)):
            self._spawn(loop(), name)
        self.started = True

    async def stop(self, deadline_s: float) -> None:
        """Takes no more messages; waits for the sends in hand; closes the SMTP sessions."""
        self.stopping = True
        self.timers.cancel_all()
        for task in self._tasks:
            task.cancel()
        async with self._lock:
            for worker in list(self.workers.values()):
                await self._unsubscribe(worker)
        busy = [asyncio.create_task(self._idle(worker)) for worker in self.workers.values()]
        if busy:
            await asyncio.wait(busy, timeout=deadline_s)
        # Only now: the sends in hand are acked on the consumers' channels.
        await self._consumers.close()
        for worker in self.workers.values():
            if worker.busy.locked():
                # Still sending after the grace: its lease runs out by itself, never given
                # back under a transaction on the wire.
                log.warning("shutdown with a send in hand", account_id=worker.account_id)
                continue
            await worker.close_session()
            with contextlib.suppress(Exception):
                await worker.release_lease()
        await self._replicas.leave()

    @property
    def borrows(self) -> dict[str, tuple[str, Any, str]]:
        """Paused account -> its standby here (and the standby's consumer of its queue)."""
        return self._standbys.borrows

    @property
    def consuming_all(self) -> bool:
        """Readiness: every account this replica should consume has its consumer."""
        due = self._wanted - self._pending_standby
        return self.started and all(
            (worker := self.workers.get(account_id)) is not None and worker.consumer_tag
            for account_id in due)

    def consumer_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.consumer_tag)

    @staticmethod
    async def _idle(worker: AccountWorker) -> None:
        async with worker.busy:
            pass

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- consumers ------------------------------------------------------------------------

    async def reconcile(self, only: str | None = None) -> None:
        if self.stopping:
            return
        rows = await store.live_accounts(self._parts.pool)
        if only is not None:
            rows = [row for row in rows if str(row["id"]) == only]
        wanted = {str(row["id"]): row for row in rows
                  if not row["paused"] and row["paused_reason"] is None}
        replicas = await self._replicas.look()
        failed = 0
        if only is None:
            self._wanted = set(wanted)
        elif only in wanted:
            self._wanted.add(only)
        else:
            self._wanted.discard(only)
        async with self._lock:
            known = [only] if only is not None else list(self.workers)
            await self._stop_unwanted(known, wanted, {str(row["id"]) for row in rows},
                                      replicas)
            now, later = self._due(wanted, replicas)
            failed += await self._subscriber.subscribe_all(now)
            for row in rows:  # connection and quota pauses end by themselves
                self.timers.follow(row)
            try:
                await self._standbys.fail_over(rows, self.workers)
            except Exception:
                failed += 1
                log.exception("fail-over to standby accounts failed")
        if later:
            self._pending_standby.update(later)
            self._spawn(self._subscribe_later(later), "standby")
        metrics.CONSUMERS.set(self.consumer_count())
        metrics.PAUSED.set(sum(1 for w in self.workers.values() if w.paused))
        if failed:
            self._recover()

    async def _stop_unwanted(self, known: list[str], wanted: dict[str, Any],
                             live: set[str], replicas: Seen) -> None:
        """Consumers this replica should not hold: an account handed back to its owner, one
        paused or deleted (its worker retired)."""
        for account_id in known:
            worker = self.workers.get(account_id)
            if (worker is not None and account_id in wanted
                    and replicas.hands_back(worker)):
                # Between its sends or during one, the lease covers the hand-over: the
                # owner's first send waits for it (and for the pause) to end.
                # Subscribed again below, behind the owner's waiting consumer: a standby.
                await self._unsubscribe(worker)
                log.info("handing the account back to its owner", account_id=account_id)
                continue
            if account_id in wanted or worker is None:
                continue
            if worker.consumer_tag is not None:
                await self._unsubscribe(worker)
            if account_id not in live:  # deleted; a paused one keeps its worker
                del self.workers[account_id]
                self._spawn(self._retire(worker), "retire")

    def _due(self, wanted: dict[str, Any], replicas: Seen) -> tuple[list[str], list[str]]:
        """The wanted accounts not consumed here: to subscribe now (this replica owns them,
        or a consumer was lost here), and later, as standby."""
        now, later = [], []
        for account_id in wanted:
            worker = self.workers.get(account_id)
            if worker is not None and worker.consumer_tag is not None:
                continue
            owner = replicas.owner(account_id)
            if owner in (None, self._parts.settings.replica_id) or worker is not None:
                now.append(account_id)  # its owner, or a consumer lost here: at once
            elif account_id not in self._pending_standby:
                later.append(account_id)
        return now, later

    async def _subscribe_later(self, account_ids: list[str]) -> None:
        """Standby subscriptions: after the owner has had its chance to become active."""
        try:
            await asyncio.sleep(STANDBY_DELAY_S)
            await self._subscribe_standby(account_ids)
        finally:
            self._pending_standby.difference_update(account_ids)

    async def _subscribe_standby(self, account_ids: list[str]) -> None:
        rows = {str(row["id"]): row for row in await store.live_accounts(self._parts.pool)}
        async with self._lock:
            if self.stopping:
                return
            due = []
            for account_id in account_ids:
                row = rows.get(account_id)
                worker = self.workers.get(account_id)
                running = worker is not None and worker.consumer_tag is not None
                if (row is not None and not row["paused"] and row["paused_reason"] is None
                        and not running):
                    due.append(account_id)
            if await self._subscriber.subscribe_all(due):
                self._recover()

    async def _unsubscribe(self, worker: AccountWorker) -> None:
        if worker.queue is not None and worker.consumer_tag is not None:
            await self._consumers.cancel(worker.queue, worker.consumer_tag)
        worker.unsubscribed()
        if not self.stopping:  # stop() gives the leases back once the sends in hand are done
            self._spawn(self._release_when_idle(worker), "release lease")
        log.info("not consuming", account_id=worker.account_id)

    @staticmethod
    async def _retire(worker: AccountWorker) -> None:
        """A deleted account's worker: its session closed once its send in hand is done."""
        async with worker.busy:
            await worker.close_session()
        worker.retire()

    @staticmethod
    async def _release_when_idle(worker: AccountWorker) -> None:
        async with worker.busy:
            await worker.release_lease()

    def _lost(self, account_ids: list[str], why: str) -> None:
        """Consumers lost with their connection or channel, or cancelled by the broker."""
        for account_id in account_ids:
            self._standbys.lost(account_id)  # a standby's consumer of that queue
            worker = self.workers.get(account_id)
            if worker is not None:
                worker.lost()
        metrics.CONSUMERS_LOST.labels(why).inc(len(account_ids))
        if not self.stopping:
            self._recover()

    def _recover(self) -> None:
        """Subscribes again what should be consumed, backing off while the broker is away."""
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(recover(self), name="recover")
            self._tasks.add(self._recovery)
            self._recovery.add_done_callback(self._tasks.discard)

    async def paused(self, worker: AccountWorker) -> None:
        """The worker's `Listener`: it paused its account, from inside its message handler."""
        await self._unsubscribe(worker)
        await self._standbys.standby_paused(worker.account_id)
        if self.workers.get(worker.account_id) is worker and not self.stopping:
            await self.reconcile(only=worker.account_id)

    async def worker_for(self, account: Any) -> AccountWorker:
        """The account's one worker in this replica (made when it has none)."""
        worker = self.workers.get(str(account["id"]))
        if worker is None:
            worker = AccountWorker(account, self._parts, self)
            self.workers[str(account["id"])] = worker
        return worker

    # -- loops ----------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self._parts.settings.reconcile_s)
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile failed")

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self._parts.settings.smtp_idle_close_s))
            now = asyncio.get_running_loop().time()
            for worker in list(self.workers.values()):
                await worker.close_if_idle(now)
