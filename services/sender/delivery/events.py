"""Every event the sender's send path emits, built here and nowhere else. Each goes into the
outbox in the transaction of the change it announces (`store`); the relay publishes it.
Event ids are stable: an event written again after a crash keeps its id."""

from datetime import datetime
from typing import Any

from shared.messages import (
    AccountPaused,
    AccountResumed,
    AccountThrottled,
    DeliveryCompleted,
    MailDeferred,
    MailFailed,
    MailSent,
    SendJob,
    stable_event_id,
)

Event = dict[str, Any]  # as the outbox stores it


def completed_id(delivery_id: str) -> str:
    """The id of the delivery's `delivery.completed`, which the outcome record writes."""
    return stable_event_id(delivery_id, "completed")


def sent(job: SendJob, account_id: str, *, metadata: dict, message_id: str | None,
         code: int | None, attempts: int = 0, requested: str | None = None) -> Event:
    """`attempts` 0: the outcome record counts them in."""
    return MailSent(
        event_id=stable_event_id(job.job_id, "sent"), delivery_id=job.delivery_id,
        metadata=metadata, account_id=account_id, recipient=job.email,
        message_id=message_id or "", smtp_code=code or 250, attempts=attempts,
        requested_account_id=requested).model_dump(mode="json")


def failed(job: SendJob, account_id: str, *, metadata: dict, state: str, stage: str | None,
           code: int | None, text: str, permanent: bool,
           requested: str | None = None) -> Event:
    """`state` is `failed` or `unknown` (the contract's `outcome`)."""
    return MailFailed(
        event_id=stable_event_id(job.job_id, state), delivery_id=job.delivery_id,
        metadata=metadata, account_id=account_id, recipient=job.email, stage=stage,
        smtp_code=code, smtp_message=text, permanent=permanent, attempts=0,
        outcome="unknown" if state == "unknown" else "failed",
        requested_account_id=requested).model_dump(mode="json")


def expired(job: SendJob, account_id: str, *, metadata: dict, text: str) -> Event:
    """Contract §6: not sent at all, no server asked."""
    return MailFailed(
        event_id=stable_event_id(job.job_id, "expired"), delivery_id=job.delivery_id,
        metadata=metadata, account_id=account_id, recipient=job.email, stage=None,
        smtp_code=None, smtp_message=text, permanent=True, attempts=0,
        reason="expired").model_dump(mode="json")


def deferred(job: SendJob, account_id: str, *, metadata: dict, code: int | None, text: str,
             attempts: int, retry_at: datetime, requested: str | None = None) -> Event:
    return MailDeferred(
        event_id=stable_event_id(job.job_id, "deferred", attempts),
        delivery_id=job.delivery_id, metadata=metadata, account_id=account_id,
        recipient=job.email, smtp_code=code, smtp_message=text, attempts=attempts,
        retry_at=retry_at, requested_account_id=requested).model_dump(mode="json")


def completed(delivery_id: str, row: Any) -> Event:
    """Again, for a redelivered job of a completed delivery. `failed` counts the unknown
    outcomes too: the contract's event has sent, failed."""
    return DeliveryCompleted(
        event_id=completed_id(delivery_id), delivery_id=delivery_id,
        metadata=row["metadata"], sent=row["sent"], failed=row["failed"] + row["unknown"],
        cancelled=row["cancelled"], suppressed=row["suppressed"],
        total=row["total"]).model_dump(mode="json")


def paused(account_id: str, *, reason: str, code: int | None, text: str,
           resumes_at: datetime | None, window: str | None) -> Event:
    return AccountPaused(account_id=account_id, reason=reason, smtp_code=code,  # type: ignore[arg-type]
                         smtp_message=text, resumes_at=resumes_at,
                         window=window).model_dump(mode="json")  # type: ignore[arg-type]


def resumed(account_id: str) -> Event:
    return AccountResumed(account_id=account_id).model_dump(mode="json")


def throttled(account_id: str, *, code: int | None, text: str, interval_ms: int) -> Event:
    return AccountThrottled(account_id=account_id, smtp_code=code, smtp_message=text,
                            interval_ms=interval_ms).model_dump(mode="json")
