"""Hand-written fakes of what the send path needs of the world (delivery.ports): a clock, an
account's lease, the database, an SMTP session. Each keeps what was asked of it."""

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.sender.delivery.compose import DeliveryContent
from services.sender.store.recipients import Recorded
from shared.smtp import SmtpStageError, Withdrawn


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)  # a suspension, as a real sleep is

    async def sleep_until(self, deadline: float) -> None:
        if deadline > self.t:
            await self.sleep(deadline - self.t)


class FakeLease:
    """One account's lease row, with the database's clock the same as the fake one."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.owner: str | None = None
        self.until = 0.0
        self.last_end: float | None = None
        self.takes = 0
        self.released: list[str] = []
        self.quotas: Any = None
        self.full: Any = None  # a QuotaFull to answer the next take with

    async def take(self, owner: str, interval_ms: int, ttl_s: float) -> Any:
        self.takes += 1
        if self.full is not None:
            full, self.full = self.full, None
            return full
        now = self.clock.now()
        if self.owner not in (None, owner) and self.until >= now:
            return None
        start = max(now, (self.last_end or now) + interval_ms / 1000)
        self.owner, self.until = owner, start + ttl_s
        return start - now

    async def extend(self, owner: str, ttl_s: float) -> bool:
        if self.owner != owner:
            return False
        self.until = self.clock.now() + ttl_s
        return True

    async def left_s(self) -> float:
        return max(0.0, self.until - self.clock.now())

    async def release(self, owner: str, touched_server: bool) -> None:
        if self.owner == owner:
            self.owner, self.until = None, 0.0
            self.released.append(owner)


def recipient_row(state: str = "queued", **changes: Any) -> dict[str, Any]:
    row = {"state": state, "attempts": 0, "last_smtp_code": None, "last_smtp_message": None,
           "message_id": None, "metadata": {"crm": "1"}, "completed_at": None, "sent": 0,
           "failed": 0, "unknown": 0, "cancelled": 0, "suppressed": 0, "total": 1,
           "expires_at": None, "paused_at": None}
    row.update(changes)
    return row


@dataclass
class FakeStore:
    """The send path's database: recipient rows by (delivery_id, index), and what was
    recorded, paused and put into the outbox. `faults` makes the next writes raise."""
    clock: FakeClock
    rows: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    pauses: list[tuple[str | None, str | None]] = field(default_factory=list)
    intervals: list[int | None] = field(default_factory=list)
    held: list[tuple[str, int]] = field(default_factory=list)
    faults: int = 0  # writes to fail before one succeeds
    outbox_faults: int = 0  # of `add_events` alone
    leases: dict[str, FakeLease] = field(default_factory=dict)
    reads: int = 0
    # After this many reads of a row, these changes to it (what another process committed).
    changes_after: tuple[int, dict[str, Any]] | None = None

    def _fault(self) -> None:
        if self.faults:
            self.faults -= 1
            raise ConnectionError("the database is away")

    async def recipient(self, delivery_id: str, index: int) -> dict[str, Any] | None:
        self.reads += 1
        row = self.rows.get((delivery_id, index))
        if row is None:
            return None
        seen = dict(row)
        if self.changes_after is not None and self.reads == self.changes_after[0]:
            row.update(self.changes_after[1])
        return seen

    async def hold(self, delivery_id: str, index: int) -> bool:
        row = self.rows[(delivery_id, index)]
        if row["state"] not in ("new", "queued", "deferred") or row["paused_at"] is None:
            return row["state"] == "scheduled"
        row["state"] = "scheduled"
        self.held.append((delivery_id, index))
        return True

    async def content(self, delivery_id: str, account: Any) -> tuple[DeliveryContent, dict]:
        if not any(key[0] == delivery_id for key in self.rows):
            raise LookupError(f"no stored delivery {delivery_id}")
        return DeliveryContent(
            from_address=account["from_address"], from_name=None, reply_to=None,
            subject="Hello", text="Hello {{name}}", html=None, headers={}, ref=7), {"crm": "1"}

    async def record(self, **outcome: Any) -> Recorded:
        self._fault()
        row = self.rows[(outcome["delivery_id"], outcome["index"])]
        if row["state"] in ("sent", "failed", "unknown", "expired", "cancelled"):
            return Recorded(applied=False, attempts=row["attempts"], lease_kept=False)
        row["state"] = outcome["state"]
        row["attempts"] += outcome["touched_server"]
        self.records.append(outcome)
        if outcome["event"] is not None:
            self.outbox.append(outcome["event"])
        return Recorded(applied=True, attempts=row["attempts"],
                        lease_kept=outcome["hold"] is not None)

    async def mark_end(self, account_id: str) -> None:
        self._fault()

    async def release_lease(self, account_id: str, owner: str, touched_server: bool) -> None:
        self._fault()
        await self.lease(account_id).release(owner, touched_server)

    async def set_paused(self, account_id: str, reason: str | None, detail: str | None,
                         event: dict | None = None, resumes_at: datetime | None = None) -> bool:
        self._fault()
        self.pauses.append((reason, detail))
        if event is not None:
            self.outbox.append(event)
        return True

    async def set_interval(self, account_id: str, interval_ms: int | None,
                           event: dict | None = None) -> None:
        self._fault()
        self.intervals.append(interval_ms)
        if event is not None:
            self.outbox.append(event)

    async def add_events(self, events: list[dict[str, Any]]) -> None:
        self._fault()
        if self.outbox_faults:
            self.outbox_faults -= 1
            raise ConnectionError("the database is away")
        self.outbox.extend(events)

    def lease(self, account_id: str) -> FakeLease:
        return self.leases.setdefault(account_id, FakeLease(self.clock))


class FakeSession:
    """An SMTP server's answers, one a send: a (code, text) accepted, an SmtpStageError
    raised, or "withdraw" (the row read before DATA decides). Keeps each envelope sent."""

    def __init__(self, *answers: Any, clock: FakeClock | None = None) -> None:
        self.answers = list(answers)
        self.connections = 0  # as a real session: the first send opens one
        self.clock = clock
        self.sent: list[tuple[str, str]] = []
        self.started: list[float] = []  # when each MAIL went out, on the fake clock
        self.closed = 0
        self.opened = 0

    async def open(self) -> None:
        self.opened += 1

    async def send(self, sender: str, recipient: str, data: bytes, *,
                   before_data: Any = None) -> tuple[int, str]:
        await asyncio.sleep(0)  # the wire: the ledger read begun beside it gets its turn
        if self.closed >= self.opened:  # no session open: this send opens one
            self.opened += 1
            self.connections += 1
        if self.clock is not None:
            self.started.append(self.clock.now())
        if before_data is not None and not await before_data():
            raise Withdrawn()
        answer = self.answers.pop(0) if self.answers else (250, "2.0.0 OK queued")
        if isinstance(answer, SmtpStageError):
            raise answer
        self.sent.append((sender, recipient))
        return answer

    async def close(self) -> None:
        self.closed = self.opened


def expired_at() -> datetime:
    return datetime(2000, 1, 1, tzinfo=UTC)
