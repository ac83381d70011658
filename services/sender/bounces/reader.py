"""The readers of the accounts' bounce mailboxes: one task per mailbox on this replica, and
one replica reading a mailbox at a time (a lease in the database, as for sending).

A pass: take the lease, open the mailbox, list its messages, and for each one not read
before fetch it, hand it to the intake (one transaction: its effect and the memory of it),
then remove it if it was a bounce. Removal always follows the commit; a message whose
removal was lost is known by its id and removed without being read again. Accounts sharing
a mailbox share its reader (their VERP bases are all tried).
"""

import asyncio
import contextlib
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from services.sender import metrics, store
from services.sender.bounces.intake import BounceIntake, FromMailbox
from services.sender.bounces.mailbox import Mailbox, MailboxError, MailboxReader
from shared.crypto import SecretBox, UndecryptableSecret

log = structlog.get_logger(__name__)

# A message whose fetch or record failed this many times is set aside (left in the mailbox,
# never read again), so that one message cannot stop its mailbox's reader for ever.
MAX_TRIES = 3
# The database away: the pass ends and the message is read next time, no try counted.
_DATABASE_AWAY = (OSError, TimeoutError, asyncpg.InterfaceError,
                  asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError)


def bounce_mailbox(row: Mapping[str, Any], box: SecretBox) -> Mailbox | None:
    """The account's bounce mailbox (contract §6), or None when it has none; raises
    UndecryptableSecret naming the account."""
    if not row["bounce_protocol"] or not row["bounce_password_enc"]:
        return None
    return Mailbox(
        protocol=row["bounce_protocol"], host=row["bounce_host"], port=row["bounce_port"],
        tls=row["bounce_tls"], username=row["bounce_username"],
        password=box.decrypt(row["bounce_password_enc"], account_id=str(row["id"]),
                             field="bounce_password"),
    )


@dataclass(frozen=True)
class Watched:
    """A mailbox and what its reader needs of the accounts that use it."""

    mailbox: Mailbox
    account_id: str  # the first account using it: unmatched bounces are filed under it
    verp_bases: tuple[str, ...]
    poll_s: float
    account_ids: tuple[str, ...] = ()  # every account using it: only their mail is matched


def watched_mailboxes(rows: Iterable[asyncpg.Record], box: SecretBox) -> dict[str, Watched]:
    """Mailbox key -> what to read; an account whose password cannot be decrypted is said
    and left out (its sending pauses for it on its own)."""
    found: dict[str, Watched] = {}
    for row in rows:
        try:
            mailbox = bounce_mailbox(row, box)
        except UndecryptableSecret as error:
            log.error("bounce mailbox not read", account_id=str(row["id"]), error=str(error))
            continue
        if mailbox is None:
            continue
        base = (row["bounce_address"],) if row["bounce_address"] else ()
        seen = found.get(mailbox.key)
        if seen is None:
            found[mailbox.key] = Watched(mailbox, str(row["id"]), base, row["bounce_poll_s"],
                                         (str(row["id"]),))
        else:
            found[mailbox.key] = Watched(mailbox, seen.account_id, seen.verp_bases + base,
                                         min(seen.poll_s, row["bounce_poll_s"]),
                                         (*seen.account_ids, str(row["id"])))
    return found


@dataclass(frozen=True)
class Pass:
    read: int  # messages read and recorded now
    removed: int
    left: int  # not read in this pass (the batch was full, or the lease lost)


class MailboxPoller:
    """Reads one mailbox, pass after pass, while it is watched."""

    def __init__(self, pool: asyncpg.Pool, intake: BounceIntake, ssl_context: ssl.SSLContext,
                 owner: str, *, timeout_s: float, lease_ttl_s: float, batch: int) -> None:
        self._pool = pool
        self._intake = intake
        self._ssl_context = ssl_context
        self._owner = owner
        self._timeout_s = timeout_s
        self._lease_ttl_s = lease_ttl_s
        self._batch = batch
        self._tries: dict[tuple[str, str], int] = {}  # (mailbox, uid) -> failed tries

    async def run(self, watched: "WatchedRef") -> None:
        while True:
            current = watched.value
            try:
                done = await self.read_once(current)
            except MailboxError as error:
                metrics.BOUNCE_READS.labels("login" if error.login else "error").inc()
                log.warning("bounce mailbox not read", mailbox=current.mailbox.key,
                            account_id=current.account_id, error=error.text)
                done = None
            except Exception as error:  # the database away, or a fault of ours: next pass
                metrics.BOUNCE_READS.labels("error").inc()
                log.warning("bounce mailbox pass failed", mailbox=current.mailbox.key,
                            error=f"{type(error).__name__}: {error}")
                done = None
            # A full batch goes on at once; otherwise the next pass after the interval.
            await asyncio.sleep(0 if done is not None and done.left else current.poll_s)

    async def read_once(self, watched: Watched) -> Pass | None:
        """One pass; None when another reader holds the mailbox."""
        key = watched.mailbox.key
        if not await store.take_mailbox(self._pool, key, self._owner, self._lease_ttl_s):
            return None
        try:
            async with MailboxReader(watched.mailbox, self._ssl_context,
                                     self._timeout_s) as reader:
                result = await self._read(reader, watched)
        finally:
            with contextlib.suppress(Exception):  # it expires by itself
                await store.release_mailbox(self._pool, key, self._owner)
        metrics.BOUNCE_READS.labels("ok").inc()
        return result

    async def _read(self, reader: MailboxReader, watched: Watched) -> Pass:
        key = watched.mailbox.key
        ids = await reader.ids()
        await store.forget_messages_gone(self._pool, key, ids)
        known = await store.messages_read(self._pool, key, ids)
        waiting = [uid for uid in ids if uid not in known or known[uid]]
        read = removed = 0
        loop = asyncio.get_running_loop()
        # Extended while a quarter of it is gone, not at each message (a round trip each).
        extend_at = loop.time() + self._lease_ttl_s / 4
        for position, uid in enumerate(waiting):
            if read >= self._batch:
                return Pass(read, removed, len(waiting) - position)
            if loop.time() >= extend_at:
                if not await store.take_mailbox(self._pool, key, self._owner,
                                                 self._lease_ttl_s):
                    return Pass(read, removed, len(waiting) - position)  # lost: stop here
                extend_at = loop.time() + self._lease_ttl_s / 4
            if uid in known:  # read before; its removal was lost
                await reader.remove(uid)
                removed += 1
                continue
            source = FromMailbox(key, uid)
            if self._tries.get((key, uid), 0) >= MAX_TRIES:
                await self._intake.set_aside(source, f"failed {MAX_TRIES} times")
                self._tries.pop((key, uid), None)
                continue
            try:
                raw = await reader.fetch(uid)
            except MailboxError:
                self._failed(key, uid)
                raise  # the session may be out of step: the pass ends
            try:
                handled = await self._intake.handle(
                    raw, watched.account_id, source=source, verp_bases=watched.verp_bases,
                    accounts=watched.account_ids or None)
            except _DATABASE_AWAY:
                raise
            except Exception as error:  # this message's fault: the others are read on
                self._failed(key, uid)
                log.error("bounce not recorded", mailbox=key, uid=uid,
                          error=f"{type(error).__name__}: {error}")
                continue
            self._tries.pop((key, uid), None)
            read += 1
            if handled.remove:
                await reader.remove(uid)
                removed += 1
        return Pass(read, removed, 0)

    def _failed(self, key: str, uid: str) -> None:
        self._tries[(key, uid)] = self._tries.get((key, uid), 0) + 1


class WatchedRef:
    """What a poller reads, changed in place when its accounts change."""

    def __init__(self, value: Watched) -> None:
        self.value = value


class BounceReaders:
    """Starts and stops a poller per mailbox as the accounts come and go."""

    def __init__(self, pool: asyncpg.Pool, box: SecretBox, poller: MailboxPoller,
                 reconcile_s: float) -> None:
        self._pool = pool
        self._box = box
        self._poller = poller
        self._reconcile_s = reconcile_s
        self._tasks: dict[str, tuple[asyncio.Task[None], WatchedRef]] = {}

    @property
    def mailboxes(self) -> list[str]:
        return sorted(self._tasks)

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.reconcile()
                except Exception as error:  # the database away: the next reconcile
                    log.warning("bounce mailboxes not listed", error=str(error))
                await asyncio.sleep(self._reconcile_s)
        finally:
            await self.stop()

    async def reconcile(self) -> None:
        wanted = watched_mailboxes(await store.bounce_accounts(self._pool), self._box)
        for key in list(self._tasks):
            if key not in wanted:
                task, _ = self._tasks.pop(key)
                task.cancel()
        for key, watched in wanted.items():
            if key in self._tasks:
                self._tasks[key][1].value = watched
            else:
                ref = WatchedRef(watched)
                task = asyncio.create_task(self._poller.run(ref), name=f"bounces {key}")
                self._tasks[key] = (task, ref)

    async def stop(self) -> None:
        tasks = [task for task, _ in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
