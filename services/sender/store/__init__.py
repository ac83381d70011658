"""Every SQL statement of the sender, by concern; the rest of the sender calls these names
through `store` (`store.record(...)`), never the database directly."""

from services.sender.store.accounts import *  # noqa: F403
from services.sender.store.bounces import *  # noqa: F403
from services.sender.store.leases import *  # noqa: F403
from services.sender.store.outbox import *  # noqa: F403
from services.sender.store.recipients import *  # noqa: F403
from services.sender.store.replicas import *  # noqa: F403
from services.sender.store.send import *  # noqa: F403
from services.sender.store.sweep import *  # noqa: F403
