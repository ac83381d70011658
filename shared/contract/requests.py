"""What other systems send the dispatcher (a delivery request, a cancel), and the job per
recipient the dispatcher sends the sender."""

import hashlib
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from shared.contract.base import AccountId, DeliveryId, Model, OneLine, utc_now

METADATA_MAX_BYTES = 4096
MAX_RECIPIENTS = 100_000


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
    first_queued_at: datetime = Field(default_factory=utc_now)
