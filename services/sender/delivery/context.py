"""The job in hand and where it came from, as the edge hands it over and the handler's steps
pass it on."""

from dataclasses import dataclass
from typing import Any

from shared.messages import SendJob


def stood_in_for(home: Any | None) -> str | None:
    """The paused account a standby sends for (contract §6 `requested_account_id`)."""
    return str(home["id"]) if home is not None else None


@dataclass(frozen=True)
class Arrival:
    """A message as the handler sees it: its job decoded once at the edge (None, with the
    reason, when it cannot be), the queue it came from, and the account stood in for."""
    job: SendJob | None
    invalid: str | None = None
    urgent: bool = False
    home: Any | None = None  # the paused account whose queue a standby consumes

    def queue_account(self, own: str) -> str:
        """The account whose queue the message came from."""
        return stood_in_for(self.home) or own


@dataclass(frozen=True)
class InTurn:
    job: SendJob
    account_id: str  # the sending account's (this worker's)
    home: Any | None = None  # the paused account stood in for, whose queue the job came from

    @property
    def requested(self) -> str | None:
        return stood_in_for(self.home)

    @property
    def queue_account(self) -> str:
        """The account whose queue the job came from."""
        return self.requested or self.account_id
