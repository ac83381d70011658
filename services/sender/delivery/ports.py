"""What the send path needs of the world, as protocols: the database (`SendStore`), the SMTP
server (`Session`) and the clock. `main` gives the real ones (`store.PoolStore`,
`shared.smtp.SmtpSession`, `pacer.Clock`); the handler's unit tests give fakes."""

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from services.sender.delivery.compose import DeliveryContent
from services.sender.delivery.disposition import Disposition
from services.sender.delivery.pacer import LeaseStore
from services.sender.store.recipients import Recorded

Row = Any  # a recipient's or an account's row: read by key


class SendStore(Protocol):
    async def recipient(self, delivery_id: str, index: int) -> Row | None: ...

    async def hold(self, delivery_id: str, index: int) -> bool: ...

    async def content(self, delivery_id: str,
                      account: Row) -> tuple[DeliveryContent, dict]: ...

    async def record(self, *, delivery_id: str, index: int, state: str, code: int | None,
                     message: str, message_id: str | None, account_id: str, owner: str,
                     touched_server: bool, hold: timedelta | None,
                     event: dict[str, Any] | None, completed_id: str | None) -> Recorded: ...

    async def mark_end(self, account_id: str) -> None: ...

    async def release_lease(self, account_id: str, owner: str,
                            touched_server: bool) -> None: ...

    async def set_paused(self, account_id: str, reason: str | None, detail: str | None,
                         event: dict[str, Any] | None = None,
                         resumes_at: datetime | None = None) -> bool: ...

    async def set_interval(self, account_id: str, interval_ms: int | None,
                           event: dict[str, Any] | None = None) -> None: ...

    async def add_events(self, events: list[dict[str, Any]]) -> None: ...

    def lease(self, account_id: str) -> LeaseStore: ...


class Session(Protocol):
    connections: int  # opened so far: a new one means the world may have moved meanwhile

    async def open(self) -> None: ...

    async def send(self, sender: str, recipient: str, data: bytes, *,
                   before_data: Callable[[], Awaitable[bool]] | None = None
                   ) -> tuple[int, str]: ...

    async def close(self) -> None: ...


# The account's session; `probe`: a session only to try the login. Raises
# UndecryptableSecret when the account's password cannot be read.
Sessions = Callable[[Row, bool], Session]


class Carrier(Protocol):
    """The message in hand, as the edge offers it."""

    def alive(self) -> bool: ...

    async def carry_out(self, disposition: Disposition) -> None: ...
