"""The parts every contract model is built of: field types, the base models, event ids."""

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)

DeliveryId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,200}$")]
AccountId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,100}$")]
OneLine = Annotated[str, StringConstraints(pattern=r"^[^\r\n]*$")]
Tls = Literal["none", "starttls", "ssl"]
FailureStage = Literal["connect", "tls", "pop", "auth", "sender", "recipient", "data"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
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
