"""A bounce message, from bytes to its effect, in one transaction: read (dsn.py), matched to
the recipient it bounced (by the VERP address it came back to, else by the Message-ID of
the returned mail), and recorded (record_bounce: the row `bounced`, the delivery's count,
`mail.bounced` in the outbox, the address suppressed after a hard bounce, a complaint, or
soft bounces beyond a count; a policy bounce raises `account.warning` instead). A bounce
that matches nothing is kept as unmatched, never guessed onto a recipient; an auto-reply is
ignored; a delayed notice is not a bounce.

Read from a mailbox, the message is remembered in the same transaction by the mailbox's id
for it: the mailbox reader removes it only once this committed, and a message read again
(its removal lost to a crash) changes nothing.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import structlog

from services.sender import metrics, store
from services.sender.bounces.dsn import BouncedRecipient, Report, parse
from services.sender.bounces.verp import Verp
from shared.messages import AccountWarning, MailBounced, stable_event_id

log = structlog.get_logger(__name__)

# Bounces are small; a bigger message (a person's mail with attachments) is not read.
MAX_BYTES = 5 * 1024 * 1024

# What is taken out of the mailbox once read; anything else (an auto-reply, a person's mail
# in a mailbox that is also the account's own) stays where it is, remembered, never re-read.
CONSUMED = frozenset({"dsn", "complaint", "plain"})


@dataclass(frozen=True)
class Handled:
    report: str  # dsn, complaint, plain, autoreply, unknown
    bounced: int  # recipients recorded as bounced now
    unmatched: int
    suppressed: int
    seen_before: bool = False  # read before from the same mailbox: nothing done again

    @property
    def remove(self) -> bool:
        return self.report in CONSUMED


@dataclass(frozen=True)
class FromMailbox:
    """Where a message was read: the mailbox's key and its id for the message."""

    mailbox: str
    uid: str


class BounceIntake:
    def __init__(self, pool: asyncpg.Pool, verp: Verp, *, soft_limit: int = 3,
                 soft_window: timedelta = timedelta(days=30)) -> None:
        self._pool = pool
        self._verp = verp
        self._soft_limit = soft_limit
        self._soft_window = soft_window

    async def handle(self, raw: bytes, account_id: str | None = None, *,
                     source: FromMailbox | None = None, verp_bases: Sequence[str] = (),
                     accounts: Sequence[str] | None = None) -> Handled:
        """`accounts`: the accounts whose mailbox it is; only their mail is matched."""
        report = await self._read(raw)
        async with self._pool.acquire() as db, db.transaction():
            if source is not None and not await store.remember_message(
                    db, source.mailbox, source.uid, report.kind, report.kind in CONSUMED):
                return Handled(report.kind, 0, 0, 0, seen_before=True)
            handled, warnings = await self._record(db, report, account_id, verp_bases,
                                                   accounts)
        # Counted once committed: a rolled-back attempt is read again and counted then.
        metrics.BOUNCE_MESSAGES.labels(report.kind).inc()
        if handled.unmatched:
            metrics.BOUNCES_UNMATCHED.inc(handled.unmatched)
        for kind, account in warnings:
            metrics.BOUNCES.labels(kind).inc()
            if kind == "policy":
                metrics.POLICY_BOUNCES.labels(account).inc()
        return handled

    async def set_aside(self, source: FromMailbox, why: str) -> None:
        """A message that failed again and again: remembered, left in the mailbox for a
        person, never read again (the rest of the mailbox is read on)."""
        async with self._pool.acquire() as db:
            await store.remember_message(db, source.mailbox, source.uid, "unreadable", False)
        log.error("bounce mailbox message set aside", mailbox=source.mailbox, uid=source.uid,
                  why=why)

    @staticmethod
    async def _read(raw: bytes) -> Report:
        if len(raw) > MAX_BYTES:
            return Report("unknown")
        try:
            # In a thread: a big message takes the email package a while, and the sender's
            # sessions, heartbeats and leases go on meanwhile.
            return await asyncio.to_thread(parse, raw)
        except Exception as error:  # a message no parser survives is left for a person
            log.error("bounce mailbox message unreadable",
                      error=f"{type(error).__name__}: {error}")
            return Report("unknown")

    async def _record(self, db: asyncpg.Connection, report: Report, account_id: str | None,
                      verp_bases: Sequence[str], accounts: Sequence[str] | None
                      ) -> tuple[Handled, list[tuple[str, str]]]:
        if report.kind in ("autoreply", "unknown"):
            return Handled(report.kind, 0, 0, 0), []
        failures = [r for r in report.recipients if r.action != "delayed"]
        if not failures:
            if report.kind != "dsn":  # a DSN of delays only is no bounce and no mystery
                await store.record_unmatched(db, account_id=account_id, report=report.kind,
                                              message_id=report.message_id, recipient=None,
                                              detail="no recipient found in it")
                return Handled(report.kind, 0, 1, 0), []
            return Handled(report.kind, 0, 0, 0), []
        row = await self._row(db, report, verp_bases, accounts)
        bounced = unmatched = suppressed = 0
        recorded: list[tuple[str, str]] = []
        for failure in failures:
            said = f"{failure.status or ''} {failure.diagnostic}".strip()
            if row is not None:
                applied, now_suppressed = await self._bounce(db, row, failure)
                if applied:
                    bounced += 1
                    suppressed += now_suppressed
                    recorded.append((failure.kind, str(row["account_id"])))
                    continue
                if row["state"] == "bounced":  # a second report of the same bounce
                    continue
                said = f"its recipient is {row['state']}, not sent: {said}"  # failed ...
            await store.record_unmatched(
                db, account_id=account_id, report=report.kind, message_id=report.message_id,
                recipient=failure.recipient, detail=said)
            unmatched += 1
        return Handled(report.kind, bounced, unmatched, suppressed), recorded

    async def _row(self, db: asyncpg.Connection, report: Report, verp_bases: Sequence[str],
                   accounts: Sequence[str] | None) -> asyncpg.Record | None:
        # The VERP address first: it is signed, and names the recipient even when the
        # bounce quotes none of the original.
        named = self._verp.find(report.to, verp_bases) if verp_bases else None
        if named is not None:
            row = await store.sent_by_ref(db, *named, accounts)
            if row is not None:
                return row
        if report.message_id:
            return await store.sent_by_message_id(db, report.message_id, accounts)
        return None

    async def _bounce(self, db: asyncpg.Connection, row: asyncpg.Record,
                      failure: BouncedRecipient) -> tuple[bool, bool]:
        account_id = str(row["account_id"])
        job_id = f"{row['delivery_id']}:{row['idx']}"
        event = MailBounced(
            event_id=stable_event_id(job_id, "bounced"), delivery_id=row["delivery_id"],
            metadata=row["metadata"], account_id=account_id, recipient=row["email"],
            message_id=row["message_id"] or "", kind=failure.kind, status=failure.status,
            diagnostic=failure.diagnostic, remote_mta=failure.remote_mta)
        applied, now_suppressed = await store.record_bounce(
            db, delivery_id=row["delivery_id"], index=row["idx"], kind=failure.kind,
            status=failure.status, diagnostic=failure.diagnostic,
            event=event.model_dump(mode="json"), soft_limit=self._soft_limit,
            soft_window=self._soft_window)
        if not applied:
            return False, False
        if failure.kind == "policy":
            # The account's problem, not the address's: said loud, never suppressed.
            log.warning("policy bounce: the provider refuses the account or its content",
                        account_id=account_id, status=failure.status,
                        diagnostic=failure.diagnostic)
            if await store.policy_warning_due(db, account_id):
                await store.add_event(db, AccountWarning(
                    account_id=account_id, reason="policy_bounce", status=failure.status,
                    diagnostic=failure.diagnostic, remote_mta=failure.remote_mta,
                ).model_dump(mode="json"))
        log.info("bounce recorded", delivery_id=row["delivery_id"], index=row["idx"],
                 kind=failure.kind, status=failure.status, suppressed=now_suppressed)
        return True, now_suppressed
