"""What becomes of the message in hand, as the handler decides and the edge carries out."""

from dataclasses import dataclass


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
