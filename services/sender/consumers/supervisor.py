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
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from services.sender import metrics, store
from services.sender.consumers import failover
from services.sender.consumers.channels import ConsumerChannels
from services.sender.delivery.worker import AccountWorker
from services.sender.parts import SenderParts

log = structlog.get_logger(__name__)

# Pauses that a change of the account ends (an operator's resume ends any). A connection
# pause also ends by itself once a probe succeeds; a changed host should not wait for it.
SETTINGS_FAULTS = frozenset({"auth", "tls", "sender_refused", "pop", "account", "secret",
                             "connect"})
STANDBY_DELAY_S = 2.0
# A replica seen this long (its own accounts subscribed) gets back the accounts that
# rendezvous hashing gives it from the replica that stood in while it was away.
HAND_BACK_AFTER_S = 10.0
SUBSCRIBE_AT_ONCE = 32  # accounts being subscribed at the same time
HEARTBEAT_S = 5.0
FIRST_RECOVERY_S = 0.2
MAX_RECOVERY_S = 30.0


def rendezvous_owner(account_id: str, replicas: list[str]) -> str | None:
    def score(replica: str) -> bytes:
        return hashlib.sha256(f"{replica}/{account_id}".encode()).digest()
    return max(replicas, key=score) if replicas else None


class Supervisor:
    def __init__(self, connection: AbstractConnection, parts: SenderParts,
                 amqp_url: str) -> None:
        self._connection = connection  # robust: account events
        self._parts = parts
        settings = parts.settings
        self._consumers = ConsumerChannels(
            amqp_url, f"sender {settings.replica_id} consumers", parts.topology,
            settings.consumers_per_channel, self._lost)
        self.workers: dict[str, AccountWorker] = {}
        # Paused account -> (its standby, the standby's consumer on the paused one's queue).
        self.borrows: dict[str, tuple[str, Any, str]] = {}
        self._wanted: set[str] = set()  # as of the last full reconcile
        self._recovery: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._probes: dict[str, asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()
        self._pending_standby: set[str] = set()
        self._first_seen: dict[str, float] = {}  # replica -> when this one first saw it live
        self._stopping = False
        self.started = False

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._heartbeat()
        events = await self._connection.channel()
        queue = await events.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._parts.topology.events_exchange, routing_key="account.*")
        await queue.consume(self._on_account_event, no_ack=True)
        await self.reconcile()
        for name, loop in (("reconcile", self._reconcile_loop), ("idle", self._idle_loop),
                           ("heartbeat", self._heartbeat_loop)):
            self._spawn(loop(), name)
        self.started = True

    async def stop(self, deadline_s: float) -> None:
        """Takes no more messages; waits for the sends in hand; closes the SMTP sessions."""
        self._stopping = True
        for task in [*self._tasks, *self._probes.values()]:
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
        await store.leave(self._parts.pool, self._parts.settings.replica_id)

    @property
    def consuming_all(self) -> bool:
        """Readiness: every account this replica should consume has its consumer."""
        due = self._wanted - self._pending_standby
        return self.started and all(
            (worker := self.workers.get(account_id)) is not None and worker.consumer_tag
            for account_id in due)

    def _consumer_count(self) -> int:
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
        if self._stopping:
            return
        rows = await store.live_accounts(self._parts.pool)
        if only is not None:
            rows = [row for row in rows if str(row["id"]) == only]
        wanted = {str(row["id"]): row for row in rows
                  if not row["paused"] and row["paused_reason"] is None}
        replicas = await self._live_replicas()
        settled = self._settled_replicas(replicas)
        later = []
        pending = self._pending_standby
        failed = 0
        if only is None:
            self._wanted = set(wanted)
        elif only in wanted:
            self._wanted.add(only)
        else:
            self._wanted.discard(only)
        async with self._lock:
            known = [only] if only is not None else list(self.workers)
            live = {str(row["id"]) for row in rows}
            for account_id in known:
                worker = self.workers.get(account_id)
                if worker is not None and account_id in wanted and self._hands_back(
                        worker, replicas, settled):
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
            now = []
            for account_id in wanted:
                worker = self.workers.get(account_id)
                if worker is not None and worker.consumer_tag is not None:
                    continue
                owner = rendezvous_owner(account_id, replicas)
                if owner in (None, self._parts.settings.replica_id) or worker is not None:
                    now.append(account_id)  # its owner, or a consumer lost here: at once
                elif account_id not in pending:
                    later.append(account_id)
            failed += await self._subscribe_all(now)
            for row in rows:  # connection pauses end by themselves once a probe succeeds
                if row["paused_reason"] == "connect":
                    self._start_probe(str(row["id"]))
                elif row["paused_reason"] == "quota":
                    self._start_quota_timer(str(row["id"]), row["resumes_at"])
            try:
                await self._fail_over(rows)
            except Exception:
                failed += 1
                log.exception("fail-over to standby accounts failed")
        if later:
            pending.update(later)
            self._spawn(self._subscribe_later(later), "standby")
        metrics.CONSUMERS.set(self._consumer_count())
        metrics.PAUSED.set(sum(1 for w in self.workers.values() if w.paused))
        if failed:
            self._recover()

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
            if self._stopping:
                return
            due = []
            for account_id in account_ids:
                row = rows.get(account_id)
                worker = self.workers.get(account_id)
                running = worker is not None and worker.consumer_tag is not None
                if (row is not None and not row["paused"] and row["paused_reason"] is None
                        and not running):
                    due.append(account_id)
            if await self._subscribe_all(due):
                self._recover()

    async def _subscribe_all(self, account_ids: list[str]) -> int:
        """Subscribes these accounts, several at once (each one's commands wait for the
        broker's replies; spread over channels they overlap); returns how many failed."""
        limit = asyncio.Semaphore(SUBSCRIBE_AT_ONCE)
        gate = asyncio.Event() if len(account_ids) > SUBSCRIBE_AT_ONCE else None

        async def one(account_id: str) -> int:
            async with limit:
                try:
                    await self._subscribe(account_id, gate)
                except Exception:
                    log.exception("subscribing failed", account_id=account_id)
                    return 1
                return 0

        try:
            return sum(await asyncio.gather(*(one(account_id) for account_id in account_ids)))
        finally:
            if gate is not None:
                gate.set()

    async def _subscribe(self, account_id: str, gate: asyncio.Event | None = None) -> None:
        account = await store.account(self._parts.pool, account_id)
        if account is None:
            return
        await store.ensure_runtime(self._parts.pool, account_id)
        worker = self.workers.get(account_id)
        if worker is None:
            worker = await self._worker_for(account)
        else:
            await worker.update(account)
        worker.subscribing(gate)
        try:
            worker.subscribed(*await self._consumers.consume(account_id, worker.on_message))
        except BaseException:
            worker.lost()
            raise
        log.info("consuming", account_id=account_id)

    async def _unsubscribe(self, worker: AccountWorker) -> None:
        if worker.queue is not None and worker.consumer_tag is not None:
            await self._consumers.cancel(worker.queue, worker.consumer_tag)
        worker.unsubscribed()
        if not self._stopping:  # stop() gives the leases back once the sends in hand are done
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
            self.borrows.pop(account_id, None)  # a standby's consumer of that queue
            worker = self.workers.get(account_id)
            if worker is not None:
                worker.lost()
        metrics.CONSUMERS_LOST.labels(why).inc(len(account_ids))
        if not self._stopping:
            self._recover()

    def _recover(self) -> None:
        """Subscribes again what should be consumed, backing off while the broker is away."""
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover_loop(), name="recover")
            self._tasks.add(self._recovery)
            self._recovery.add_done_callback(self._tasks.discard)

    async def _recover_loop(self) -> None:
        delay = FIRST_RECOVERY_S
        while not self._stopping:
            await asyncio.sleep(delay)
            try:
                await self.reconcile()
                if self.consuming_all:
                    log.info("consumers recovered", consumers=self._consumer_count())
                    return
            except Exception as error:
                log.warning("recovering the consumers failed; retrying", error=str(error),
                            retry_in_s=delay)
            delay = min(delay * 2, MAX_RECOVERY_S)

    async def paused(self, worker: AccountWorker) -> None:
        """The worker's `Listener`: it paused its account, from inside its message handler."""
        await self._unsubscribe(worker)
        for home, (standby, queue, tag) in list(self.borrows.items()):
            if standby == worker.account_id:  # a paused standby stands in for nobody
                del self.borrows[home]
                await self._consumers.cancel(queue, tag)
        if self.workers.get(worker.account_id) is worker and not self._stopping:
            await self.reconcile(only=worker.account_id)

    # -- fail-over ------------------------------------------------------------------------

    async def _fail_over(self, rows: list[Any]) -> None:
        """Each paused account (of the live `rows` reconciled) whose first usable standby is
        consumed here: that standby's worker consumes the paused account's queue too (single
        active consumer: one replica does); when the account runs again, or the standby is
        no longer usable, it stops. Only accounts paused with standbys, and those failed over
        now, are read in full: a reconcile of thousands of running accounts reads no more."""
        homes = [str(row["id"]) for row in rows
                 if row["paused_reason"] in failover.FAILOVER_REASONS
                 and row["standby_account_ids"]]
        homes += [home for home in self.borrows if home not in homes]
        for home in homes:
            account = await store.account(self._parts.pool, home)
            standby = None
            if account is not None and account["deleted_at"] is None:
                standbys = {standby_id: await store.account(self._parts.pool, standby_id)
                            for standby_id in account["standby_account_ids"] or []}
                standby = failover.standby_for(account, standbys.get)
            worker = self.workers.get(standby) if standby else None
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

    # -- account events -------------------------------------------------------------------

    async def _on_account_event(self, message: AbstractIncomingMessage) -> None:
        try:
            event = orjson.loads(message.body)
            account_id = str(event["account_id"])
            kind = event["type"]
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable account event ignored")
            return
        try:
            await self._follow(kind, account_id)
        except Exception:
            log.exception("following an account event failed; the reconcile will catch up",
                          account_id=account_id)

    async def _follow(self, kind: str, account_id: str) -> None:
        account = await store.account(self._parts.pool, account_id)
        worker = self.workers.get(account_id)
        if account is not None and kind in ("account.updated", "account.resumed"):
            reason = account["paused_reason"]
            ends_pause = (kind == "account.resumed" and reason is not None) or (
                kind == "account.updated" and reason in SETTINGS_FAULTS)
            if ends_pause:
                if worker is None:
                    worker = await self._worker_for(account)
                await worker.resume(announce=kind != "account.resumed")
                self._stop_probe(account_id)
                account = await store.account(self._parts.pool, account_id)
            if worker is not None and account is not None:
                async with worker.busy:
                    await worker.update(account)
        await self.reconcile(only=account_id)

    # -- probes of accounts paused for connection failures --------------------------------

    def _start_probe(self, account_id: str) -> None:
        if account_id not in self._probes and not self._stopping:
            self._probes[account_id] = asyncio.create_task(self._probe_loop(account_id))

    def _start_quota_timer(self, account_id: str, resumes_at: Any) -> None:
        if account_id not in self._probes and not self._stopping:
            self._probes[account_id] = asyncio.create_task(
                self._resume_at(account_id, resumes_at))

    async def _resume_at(self, account_id: str, resumes_at: Any) -> None:
        """A quota pause ends when the quota is likely back; the next send tells (another
        quota reply pauses it again, for twice as long)."""
        try:
            if resumes_at is not None:
                await asyncio.sleep(max(0.0, (resumes_at - datetime.now(UTC)).total_seconds()))
            account = await store.account(self._parts.pool, account_id)
            if account is None or account["paused_reason"] != "quota":
                return
            worker = await self._worker_for(account)
            await worker.resume()
            log.info("quota pause over", account_id=account_id)
            await self.reconcile(only=account_id)
        finally:
            self._probes.pop(account_id, None)

    def _stop_probe(self, account_id: str) -> None:
        task = self._probes.pop(account_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _probe_loop(self, account_id: str) -> None:
        wait = self._parts.settings.probe_min_s
        try:
            while True:
                await asyncio.sleep(wait)
                worker = self.workers.get(account_id)
                account = await store.account(self._parts.pool, account_id)
                if account is None or account["paused_reason"] != "connect":
                    return
                if worker is None:
                    worker = await self._worker_for(account)
                if await worker.probe():
                    await worker.resume()
                    await self.reconcile(only=account_id)
                    return
                wait = min(wait * 2, self._parts.settings.probe_max_s)
        finally:
            self._probes.pop(account_id, None)

    async def _worker_for(self, account: Any) -> AccountWorker:
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

    async def _heartbeat(self) -> None:
        await store.heartbeat(self._parts.pool, self._parts.settings.replica_id)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._heartbeat()
            except Exception:
                log.exception("heartbeat failed")

    def _settled_replicas(self, replicas: list[str]) -> list[str]:
        """The live replicas seen for HAND_BACK_AFTER_S at least (this one always)."""
        now = asyncio.get_running_loop().time()
        self._first_seen = {r: self._first_seen.get(r, now) for r in replicas}
        me = self._parts.settings.replica_id
        return [r for r in replicas
                if r == me or now - self._first_seen[r] >= HAND_BACK_AFTER_S]

    def _hands_back(self, worker: AccountWorker, replicas: list[str],
                    settled: list[str]) -> bool:
        """This replica is the active consumer of an account that another replica owns, one
        seen long enough to be subscribed to it."""
        if worker.consumer_tag is None or not worker.delivered:
            return False
        owner = rendezvous_owner(worker.account_id, replicas)
        return owner != self._parts.settings.replica_id and owner in settled

    async def _live_replicas(self) -> list[str]:
        return await store.live_replicas(self._parts.pool, timedelta(seconds=HEARTBEAT_S * 3))
