"""The events of the contract (project -> everyone, exchange `mail.events`, routing key =
`type`)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from shared.contract.accounts import AccountPublic
from shared.contract.base import FailureStage, Model, OmitsAbsent, new_event_id, utc_now


class Event(Model):
    event_id: str = Field(default_factory=new_event_id)
    occurred_at: datetime = Field(default_factory=utc_now)


class DeliveryEvent(Event):
    delivery_id: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class DeliveryAccepted(DeliveryEvent, OmitsAbsent):
    type: Literal["delivery.accepted"] = "delivery.accepted"
    account_id: str
    recipients: int
    send_at: datetime | None = None  # contract §6: when scheduled
    suppressed: int = 0  # contract §6: of `recipients`, left out by the suppression list

    omitted_when_none = ("send_at",)


class DeliveryRejected(DeliveryEvent):
    type: Literal["delivery.rejected"] = "delivery.rejected"
    reason: str
    detail: str


class RecipientEvent(DeliveryEvent, OmitsAbsent):
    """Contract §6: `requested_account_id` when a standby account sent instead of the one
    asked for (`account_id` is the one that sent); absent otherwise."""

    requested_account_id: str | None = None

    omitted_when_none = ("requested_account_id",)


class MailSent(RecipientEvent):
    type: Literal["mail.sent"] = "mail.sent"
    account_id: str
    recipient: str
    message_id: str
    smtp_code: int
    attempts: int


class MailDeferred(RecipientEvent):
    type: Literal["mail.deferred"] = "mail.deferred"
    account_id: str
    recipient: str
    smtp_code: int | None
    smtp_message: str
    attempts: int
    retry_at: datetime


class MailFailed(RecipientEvent):
    type: Literal["mail.failed"] = "mail.failed"
    account_id: str
    recipient: str
    stage: FailureStage | None  # None for an expired recipient: no server was asked
    smtp_code: int | None
    smtp_message: str
    permanent: bool
    attempts: int
    # Added to the contract: `unknown` when the server may have accepted the message (the
    # connection was lost after the data was sent); it is not retried.
    outcome: Literal["failed", "unknown"] = "failed"
    reason: Literal["expired"] | None = None  # contract §6: past the delivery's expires_at

    omitted_when_none = ("requested_account_id", "reason")


class MailBounced(RecipientEvent):
    """Contract §6: a bounce (or a complaint) that came back after the mail was sent."""

    type: Literal["mail.bounced"] = "mail.bounced"
    account_id: str
    recipient: str
    message_id: str
    kind: Literal["hard", "soft", "policy", "complaint"]
    status: str | None
    diagnostic: str
    remote_mta: str | None


class DeliveryCompleted(DeliveryEvent):
    type: Literal["delivery.completed"] = "delivery.completed"
    sent: int
    failed: int
    total: int
    cancelled: int = 0  # contract §6
    suppressed: int = 0  # contract §6: counted in total, neither sent nor failed


class DeliveryCancelled(DeliveryEvent):
    """Contract §6: `sent` counts the recipients recorded as sent when the cancel committed."""

    type: Literal["delivery.cancelled"] = "delivery.cancelled"
    sent: int
    cancelled: int
    total: int


class AccountPaused(Event):
    type: Literal["account.paused"] = "account.paused"
    account_id: str
    reason: str
    smtp_code: int | None = None
    smtp_message: str | None = None
    # Contract §6, reason `quota`: when it resumes by itself, and the window, when known.
    resumes_at: datetime | None = None
    window: Literal["minute", "hour", "day"] | None = None


class AccountResumed(Event):
    type: Literal["account.resumed"] = "account.resumed"
    account_id: str


class AccountThrottled(Event):
    type: Literal["account.throttled"] = "account.throttled"
    account_id: str
    smtp_code: int | None
    smtp_message: str
    interval_ms: int


class AccountWarning(Event):
    """Addition (issue 15): the provider refused the account or its content, not the address
    (a policy bounce, X.7.x: a blocklist, the reputation, the content). At most one an hour
    per account; the recipients are never suppressed for it."""

    type: Literal["account.warning"] = "account.warning"
    account_id: str
    reason: Literal["policy_bounce"]
    status: str | None
    diagnostic: str
    remote_mta: str | None


class AccountCreated(Event):
    type: Literal["account.created"] = "account.created"
    account_id: str
    account: AccountPublic


class AccountUpdated(Event):
    type: Literal["account.updated"] = "account.updated"
    account_id: str
    account: AccountPublic


class AccountDeleted(Event):
    type: Literal["account.deleted"] = "account.deleted"
    account_id: str
    account: AccountPublic


EVENT_TYPES: tuple[type[Event], ...] = (
    DeliveryAccepted, DeliveryRejected, MailSent, MailDeferred, MailFailed, MailBounced,
    DeliveryCompleted, DeliveryCancelled, AccountPaused, AccountResumed, AccountThrottled,
    AccountWarning, AccountCreated, AccountUpdated, AccountDeleted,
)


def routing_key(event: Event) -> str:
    return event.type  # type: ignore[attr-defined]
