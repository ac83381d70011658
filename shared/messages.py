"""Every message and event of the public contract (CONTRACT.md), as pydantic models.

Bytes are decoded into these at the edge of each service; handlers only see models.
"""

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)

DeliveryId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,200}$")]
AccountId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,100}$")]
OneLine = Annotated[str, StringConstraints(pattern=r"^[^\r\n]*$")]
Tls = Literal["none", "starttls", "ssl"]
FailureStage = Literal["connect", "tls", "pop", "auth", "sender", "recipient", "data"]

METADATA_MAX_BYTES = 4096
MAX_RECIPIENTS = 100_000


def _now() -> datetime:
    return datetime.now(UTC)


def _event_id() -> str:
    return uuid.uuid4().hex


def stable_event_id(*parts: object) -> str:
    """The same event gets the same id when a crash or a redelivery makes us publish it
    again (at-least-once: consumers drop repeats by `event_id`)."""
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:32]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- delivery requests (other systems -> dispatcher) ---------------------------------------


class Recipient(Model):
    email: Annotated[str, StringConstraints(min_length=3, max_length=320)]
    name: OneLine | None = None
    vars: dict[str, str] = Field(default_factory=dict)


class DeliveryRequest(Model):
    """`delivery.request` on exchange `mail.requests`."""

    delivery_id: DeliveryId
    account_id: AccountId | None = None
    requested_by: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    subject: Annotated[OneLine, StringConstraints(max_length=998)]
    text: str | None = None
    html: str | None = None
    recipients: Annotated[list[Recipient], Field(min_length=1, max_length=MAX_RECIPIENTS)]
    headers: dict[str, OneLine] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _body_and_metadata(self) -> "DeliveryRequest":
        if self.text is None and self.html is None:
            raise ValueError("at least one of text and html is required")
        if len(orjson.dumps(self.metadata)) > METADATA_MAX_BYTES:
            raise ValueError(f"metadata is larger than {METADATA_MAX_BYTES} bytes")
        return self


class SendJob(Model):
    """One recipient of a stored delivery, published to `mail.send` with key = account id.

    It carries a reference to the delivery, not its body.
    """

    job_id: str
    delivery_id: DeliveryId
    account_id: AccountId
    index: Annotated[int, Field(ge=0)]
    email: str
    name: str | None = None
    vars: dict[str, str] = Field(default_factory=dict)
    first_queued_at: datetime = Field(default_factory=_now)


# -- accounts as other systems see them (never a secret) -----------------------------------


class AccountPublic(Model):
    id: str
    name: str
    personal: bool
    owner: str | None
    from_address: str
    from_name: str | None
    reply_to: str | None
    smtp_host: str
    smtp_port: int
    smtp_auth: bool
    smtp_username: str | None
    pop_before_smtp: bool
    pop_host: str | None
    pop_port: int | None
    pop_username: str | None
    tls: Tls
    local_hostname: str | None
    send_interval_ms: int
    quota_per_minute: int | None = None
    quota_per_hour: int | None = None
    quota_per_day: int | None = None
    standby_account_ids: list[str] = Field(default_factory=list)
    allowed_from: list[str] = Field(default_factory=list)
    is_default: bool
    paused: bool
    created_by: str
    created_at: datetime
    updated_by: str | None
    updated_at: datetime | None


# -- events (project -> everyone, exchange `mail.events`) ----------------------------------


class Event(Model):
    event_id: str = Field(default_factory=_event_id)
    occurred_at: datetime = Field(default_factory=_now)


class DeliveryEvent(Event):
    delivery_id: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class DeliveryAccepted(DeliveryEvent):
    type: Literal["delivery.accepted"] = "delivery.accepted"
    account_id: str
    recipients: int


class DeliveryRejected(DeliveryEvent):
    type: Literal["delivery.rejected"] = "delivery.rejected"
    reason: str
    detail: str


class RecipientEvent(DeliveryEvent):
    """Contract §6: `requested_account_id` when a standby account sent instead of the one
    asked for (`account_id` is the one that sent); absent otherwise."""

    requested_account_id: str | None = None

    @model_serializer(mode="wrap")
    def _without_absent_request(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("requested_account_id") is None:
            data.pop("requested_account_id", None)
        return data


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
    stage: FailureStage
    smtp_code: int | None
    smtp_message: str
    permanent: bool
    attempts: int
    # Added to the contract: `unknown` when the server may have accepted the message (the
    # connection was lost after the data was sent); it is not retried.
    outcome: Literal["failed", "unknown"] = "failed"


class DeliveryCompleted(DeliveryEvent):
    type: Literal["delivery.completed"] = "delivery.completed"
    sent: int
    failed: int
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
    DeliveryAccepted, DeliveryRejected, MailSent, MailDeferred, MailFailed, DeliveryCompleted,
    AccountPaused, AccountResumed, AccountThrottled, AccountCreated, AccountUpdated,
    AccountDeleted,
)
MESSAGE_TYPES: tuple[type[BaseModel], ...] = (DeliveryRequest, SendJob, *EVENT_TYPES)


def routing_key(event: Event) -> str:
    return event.type  # type: ignore[attr-defined]
