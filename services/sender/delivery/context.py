"""The job in hand and where it came from, as the handler's steps pass it on."""

from dataclasses import dataclass
from typing import Any

from shared.messages import SendJob


@dataclass(frozen=True)
class InTurn:
    job: SendJob
    account_id: str  # the sending account's (this worker's)
    home: Any | None = None  # the paused account stood in for, whose queue the job came from

    @property
    def queue_account(self) -> str:
        """The account whose queue the job came from."""
        return str(self.home["id"]) if self.home is not None else self.account_id

    @property
    def requested(self) -> str | None:
        """Contract §6 `requested_account_id`: set when a standby sends."""
        return str(self.home["id"]) if self.home is not None else None
