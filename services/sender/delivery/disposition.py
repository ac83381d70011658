"""What becomes of the message in hand, as the handler decides and the edge carries out."""

from dataclasses import dataclass
from typing import Any

from shared.messages import SendJob


@dataclass(frozen=True)
class Arrival:
    """A message as the handler sees it: its job decoded once at the edge (None, with the
    reason, when it cannot be), the queue it came from, and the account stood in for."""
    job: SendJob | None
    invalid: str | None = None
    urgent: bool = False
    home: Any | None = None  # the paused account whose queue a standby consumes


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class Requeue:
    """Back to the head of its queue (delivered before a cancel or a pause took effect):
    another consumer, or this one later, takes it."""


@dataclass(frozen=True)
class ToQueue:
    """Back to an account's queue (its tail), then acked: a paused account's job, or a job
    found on another account's queue."""
    account_id: str


@dataclass(frozen=True)
class ToRetry:
    delay_s: int


@dataclass(frozen=True)
class ToDead:
    reason: str
    detail: str


Disposition = Ack | Requeue | ToQueue | ToRetry | ToDead
