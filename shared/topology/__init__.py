"""The exchanges and queues of the contract, declared idempotently, and publishing helpers.

Names default to CONTRACT.md (`mail.requests`, `mail.send.<account_id>`, ...); a deployment
may change the common prefix. Declaring the same thing twice is a no-op in RabbitMQ as long
as the arguments are the same, so every service declares what it uses at start.

The names, arguments and declarations are in `layout`, the upgrade of the first version's
classic retry queues in `classic_retry`, publishing in `publishing`. Callers import from
`shared.topology`.
"""

from shared.topology.layout import Topology, delay_label
from shared.topology.publishing import (
    JSON,
    EventPublisher,
    event_message,
    make_message,
    open_confirmed_channel,
    open_transaction_channel,
    publish,
    publish_many,
)

__all__ = [
    "JSON",
    "EventPublisher",
    "Topology",
    "delay_label",
    "event_message",
    "make_message",
    "open_confirmed_channel",
    "open_transaction_channel",
    "publish",
    "publish_many",
]
