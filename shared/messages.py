"""Every message and event of the public contract (CONTRACT.md), as pydantic models.

Bytes are decoded into these at the edge of each service; handlers only see models.
"""

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    TypeAdapter,
    model_serializer,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

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


class OmitsAbsent(Model):
    """Optional fields of contract §6 that are left out of the JSON when they are None, so
    that a v1 consumer sees the v1 message."""

    omitted_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self.omitted_when_none:
                if data.get(name) is None:
                    data.pop(name, None)
        return data


# -- delivery requests (other systems -> dispatcher) ---------------------------------------


# A slotted dataclass, not a model: a request holds up to 100,000 of them, and a model's
# `__dict__` and fields-set make each 2.8 times as large (69 against 25 MB).
@pydantic_dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class Recipient:
    email: Annotated[str, StringConstraints(min_length=3, max_length=320)]
    name: OneLine | None = None
    vars: dict[str, str] = Field(default_factory=dict)


RECIPIENTS = TypeAdapter(list[Recipient])
# How many recipients are built (decode) or dumped (hash) at a time: the memory of a request
# of 100,000 stays that of its recipients, not of a second copy of them all.
RECIPIENT_WINDOW = 1000


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
    # Contract §6: high overtakes the normal jobs waiting for the same account; send_at fans
    # out at that time; a recipient not sent by expires_at is not sent at all.
    priority: Literal["normal", "high"] = "normal"
    send_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _body_and_metadata(self) -> "DeliveryRequest":
        if self.text is None and self.html is None:
            raise ValueError("at least one of text and html is required")
        try:  # what the stores cannot take: an integer over 64 bits, a lone surrogate
            orjson.dumps(self.model_dump(exclude={"recipients", "metadata"}))
            size = len(orjson.dumps(self.metadata))
        except orjson.JSONEncodeError as error:
            raise ValueError(f"cannot be stored: {error}") from None
        if size > METADATA_MAX_BYTES:
            raise ValueError(f"metadata is larger than {METADATA_MAX_BYTES} bytes")
        if self.send_at and self.expires_at and self.expires_at <= self.send_at:
            raise ValueError("expires_at must be later than send_at")
        return self

    def canonical_sha256(self) -> bytes:
        """The SHA-256 of the request as one byte string whatever its spelling (key order,
        spaces, defaults written or not): a repeat by HTTP of a request published by AMQP
        is the same. That string is `orjson.dumps(model_dump(mode="json"), OPT_SORT_KEYS)`,
        hashed a window of recipients at a time: the dump of 100,000 at once took 60 MB."""
        marker = uuid.uuid4().hex  # stands for the recipients in the dump of the rest
        rest = self.model_dump(mode="json", exclude={"recipients"})
        before, after = orjson.dumps({**rest, "recipients": marker},
                                     option=orjson.OPT_SORT_KEYS).split(
            b'"recipients":"' + marker.encode() + b'"')
        digest = hashlib.sha256(before + b'"recipients":[')
        for start in range(0, len(self.recipients), RECIPIENT_WINDOW):
            window = RECIPIENTS.dump_python(
                self.recipients[start:start + RECIPIENT_WINDOW], mode="json")
            if start:
                digest.update(b",")
            digest.update(orjson.dumps(window, option=orjson.OPT_SORT_KEYS)[1:-1])
        digest.update(b"]" + after)
        return digest.digest()


class DeliveryCancel(Model):
    """`delivery.cancel` on exchange `mail.requests` (contract §6)."""

    delivery_id: DeliveryId
    requested_by: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


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
    bounce_protocol: Literal["imap", "pop3"] | None = None
    bounce_host: str | None = None
    bounce_port: int | None = None
    bounce_tls: Tls = "ssl"
    bounce_username: str | None = None
    bounce_address: str | None = None
    bounce_poll_s: int = 300
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
MESSAGE_TYPES: tuple[type[BaseModel], ...] = (DeliveryRequest, DeliveryCancel, SendJob,
                                              *EVENT_TYPES)


def routing_key(event: Event) -> str:
    return event.type  # type: ignore[attr-defined]
