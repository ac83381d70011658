"""Every message and event of the public contract (CONTRACT.md), as pydantic models.

Bytes are decoded into these at the edge of each service; handlers only see models. They are
defined by kind in shared/contract/ (base parts, requests and jobs, accounts, events), and
imported from here.
"""

from pydantic import BaseModel

from shared.contract.accounts import AccountPublic
from shared.contract.base import (
    AccountId,
    DeliveryId,
    FailureStage,
    Model,
    OmitsAbsent,
    OneLine,
    Tls,
    stable_event_id,
)
from shared.contract.events import (
    EVENT_TYPES,
    AccountCreated,
    AccountDeleted,
    AccountPaused,
    AccountResumed,
    AccountThrottled,
    AccountUpdated,
    AccountWarning,
    DeliveryAccepted,
    DeliveryCancelled,
    DeliveryCompleted,
    DeliveryEvent,
    DeliveryRejected,
    Event,
    MailBounced,
    MailDeferred,
    MailFailed,
    MailSent,
    RecipientEvent,
    routing_key,
)
from shared.contract.requests import (
    MAX_RECIPIENTS,
    METADATA_MAX_BYTES,
    RECIPIENT_WINDOW,
    RECIPIENTS,
    DeliveryCancel,
    DeliveryRequest,
    Recipient,
    SendJob,
)

MESSAGE_TYPES: tuple[type[BaseModel], ...] = (DeliveryRequest, DeliveryCancel, SendJob,
                                              *EVENT_TYPES)

__all__ = [
    "EVENT_TYPES",
    "MAX_RECIPIENTS",
    "MESSAGE_TYPES",
    "METADATA_MAX_BYTES",
    "RECIPIENTS",
    "RECIPIENT_WINDOW",
    "AccountCreated",
    "AccountDeleted",
    "AccountId",
    "AccountPaused",
    "AccountPublic",
    "AccountResumed",
    "AccountThrottled",
    "AccountUpdated",
    "AccountWarning",
    "DeliveryAccepted",
    "DeliveryCancel",
    "DeliveryCancelled",
    "DeliveryCompleted",
    "DeliveryEvent",
    "DeliveryId",
    "DeliveryRejected",
    "DeliveryRequest",
    "Event",
    "FailureStage",
    "MailBounced",
    "MailDeferred",
    "MailFailed",
    "MailSent",
    "Model",
    "OmitsAbsent",
    "OneLine",
    "Recipient",
    "RecipientEvent",
    "SendJob",
    "Tls",
    "routing_key",
    "stable_event_id",
]
