"""A bounce message, from bytes to its effect: read (dsn.py), matched to the recipient it
bounced by the Message-ID of the returned mail, and recorded in one transaction a recipient
(record_bounce: the row `bounced`, the delivery's count, `mail.bounced` in the outbox, the
address suppressed after a hard bounce, a complaint, or soft bounces beyond a count). A
bounce that matches nothing is kept as unmatched, never guessed onto a recipient; an
auto-reply is ignored; a delayed notice is not a bounce.

The mailbox reader (IMAP / POP3, one reader a mailbox across replicas) hands each message
here and removes it from the mailbox only once this returned.
"""

from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import structlog

from services.sender import ledger, metrics
from services.sender.dsn import parse
from shared.messages import MailBounced, stable_event_id

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Handled:
    report: str  # dsn, complaint, plain, autoreply, unknown
    bounced: int  # recipients recorded as bounced now
    unmatched: int
    suppressed: int


class BounceIntake:
    def __init__(self, pool: asyncpg.Pool, *, soft_limit: int = 3,
                 soft_window: timedelta = timedelta(days=30)) -> None:
        self._pool = pool
        self._soft_limit = soft_limit
        self._soft_window = soft_window

    async def handle(self, raw: bytes, account_id: str | None = None) -> Handled:
        report = parse(raw)
        if report.kind == "autoreply":
            metrics.BOUNCE_MESSAGES.labels("autoreply").inc()
            return Handled("autoreply", 0, 0, 0)
        metrics.BOUNCE_MESSAGES.labels(report.kind).inc()
        failures = [r for r in report.recipients if r.action != "delayed"]
        if not failures and report.kind != "dsn":
            await ledger.record_unmatched(self._pool, account_id=account_id,
                                          report=report.kind, message_id=report.message_id,
                                          recipient=None, detail="no recipient found in it")
            metrics.BOUNCES_UNMATCHED.inc()
            return Handled(report.kind, 0, 1, 0)
        bounced = unmatched = suppressed = 0
        for failure in failures:
            row = (await ledger.sent_by_message_id(self._pool, report.message_id)
                   if report.message_id else None)
            if row is None:
                await ledger.record_unmatched(
                    self._pool, account_id=account_id, report=report.kind,
                    message_id=report.message_id, recipient=failure.recipient,
                    detail=f"{failure.status or ''} {failure.diagnostic}".strip())
                metrics.BOUNCES_UNMATCHED.inc()
                unmatched += 1
                continue
            job_id = f"{row['delivery_id']}:{row['idx']}"
            event = MailBounced(
                event_id=stable_event_id(job_id, "bounced"), delivery_id=row["delivery_id"],
                metadata=row["metadata"], account_id=str(row["account_id"]),
                recipient=row["email"], message_id=row["message_id"], kind=failure.kind,
                status=failure.status, diagnostic=failure.diagnostic,
                remote_mta=failure.remote_mta)
            applied, now_suppressed = await ledger.record_bounce(
                self._pool, delivery_id=row["delivery_id"], index=row["idx"],
                kind=failure.kind, status=failure.status, diagnostic=failure.diagnostic,
                event=event.model_dump(mode="json"), soft_limit=self._soft_limit,
                soft_window=self._soft_window)
            if applied:
                bounced += 1
                suppressed += now_suppressed
                metrics.BOUNCES.labels(failure.kind).inc()
                if failure.kind == "policy":
                    # The account's problem, not the address's: said loud, never suppressed.
                    metrics.POLICY_BOUNCES.labels(str(row["account_id"])).inc()
                    log.warning("policy bounce: the provider refuses the account or its "
                                "content", account_id=str(row["account_id"]),
                                status=failure.status, diagnostic=failure.diagnostic)
                log.info("bounce recorded", delivery_id=row["delivery_id"], index=row["idx"],
                         kind=failure.kind, status=failure.status, suppressed=now_suppressed)
        return Handled(report.kind, bounced, unmatched, suppressed)
