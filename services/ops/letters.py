"""A message of `mail.dead` as an operator sees it: what it is, how it is described,
which ones a command selects, and where a replay would send it. No broker I/O here: the
queue itself is read, held and given back in `services.ops.dead`."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from shared.topology import Topology

# What is kept of a body that no replay or renewal needs: enough for every preview. So that
# reading 10,000 letters (a `too_large` request can be 32 MiB) holds megabytes, not gigabytes.
PREVIEW_KEEP = 16 * 1024
ACCOUNT_DELETED = "account_deleted"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _plain(value: Any) -> Any:
    """A header value as JSON can show it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float | bool | str) or value is None:
        return value
    return str(value)


def preview(body: bytes, size: int) -> str:
    text = body[: size * 4].decode("utf-8", "replace")
    return text if len(text) <= size else text[: size - 1] + "…"


@dataclass
class DeadLetter:
    position: int  # 1-based, in the order read (the queue's order)
    message: AbstractIncomingMessage = field(repr=False)
    body_bytes: int = -1  # of the whole body, also when only its start is kept
    whole: bool = True  # the whole body is held (a replay or a renewal needs it)

    def __post_init__(self) -> None:
        if self.body_bytes < 0:
            self.body_bytes = len(self.message.body)

    def keep_only_preview(self) -> None:
        if len(self.message.body) > PREVIEW_KEEP:
            self.message.body = self.message.body[:PREVIEW_KEEP]
            self.whole = False

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.message.headers or {})

    def header(self, name: str) -> str | None:
        return _text(self.headers.get(name))

    @property
    def message_id(self) -> str:
        return self.message.message_id or ""

    @property
    def deaths(self) -> list[dict[str, Any]]:
        """x-death, newest first: the broker's own dead-lettering (delivery limit, expiry)."""
        value = self.headers.get("x-death")
        return [entry for entry in value if isinstance(entry, dict)] if isinstance(
            value, list) else []

    @property
    def reason(self) -> str | None:
        """x-reason (set by the service that moved it here), else the broker's x-death reason."""
        if reason := self.header("x-reason"):
            return reason
        deaths = self.deaths
        return _text(deaths[0].get("reason")) if deaths else None

    @property
    def delivery_count(self) -> int:
        try:
            return int(self.headers.get("x-delivery-count") or 0)
        except (TypeError, ValueError):
            return 0

    @property
    def delivery_id(self) -> str | None:
        return self.header("x-delivery-id") or self.header("delivery_id")

    @property
    def account_id(self) -> str | None:
        return self.header("x-account-id") or self.header("account_id")

    def origin(self) -> str:
        """Where it was before mail.dead, in a few words, for the list."""
        if exchange := self.header("x-original-exchange"):
            return f"{exchange} / {self.header('x-original-routing-key') or ''}"
        if queue := self.header("x-original-queue"):
            return queue
        deaths = self.deaths
        if deaths:
            return _text(deaths[0].get("queue")) or ""
        return ""

    def summary(self, preview_chars: int = 80) -> dict[str, Any]:
        return {
            "position": self.position,
            "message_id": self.message_id,
            "reason": self.reason,
            "detail": self.header("x-detail"),
            "delivery_id": self.delivery_id,
            "account_id": self.account_id,
            "origin": self.origin(),
            "body_bytes": self.body_bytes,
            "body_preview": preview(self.message.body, preview_chars),
        }

    def details(self, preview_chars: int = 2000) -> dict[str, Any]:
        message = self.message
        return {
            **self.summary(preview_chars),
            "routing_key": message.routing_key,
            "x-reason": self.header("x-reason"),
            "x-detail": self.header("x-detail"),
            "x-delivery-id": self.header("x-delivery-id"),
            "x-original-exchange": self.header("x-original-exchange"),
            "x-original-routing-key": self.header("x-original-routing-key"),
            "x-original-queue": self.header("x-original-queue"),
            "x-death": [
                {key: _plain(entry.get(key))
                 for key in ("exchange", "routing-keys", "queue", "reason", "count", "time")}
                for entry in self.deaths
            ],
            "headers": _plain(self.headers),
            "properties": {
                "content_type": message.content_type,
                "content_encoding": message.content_encoding,
                "type": message.type,
                "timestamp": _plain(message.timestamp),
                "delivery_mode": int(message.delivery_mode or 0),
            },
        }


# -- where a replay goes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    exchange: str
    routing_key: str
    why: str
    queue_needed: str | None = None  # replayed only while this queue exists (an account's)

    def __str__(self) -> str:
        return f"exchange {self.exchange or '(default)'!r}, routing key {self.routing_key!r}"


class Unreplayable(Exception):
    pass


def _account_of_queue(topology: Topology, queue: str | None) -> str | None:
    prefix = topology.account_queue("")
    if queue and queue.startswith(prefix) and len(queue) > len(prefix):
        return queue[len(prefix):]
    return None


def plan(letter: DeadLetter, topology: Topology) -> Target:
    """Where replaying `letter` sends it; raises Unreplayable when nowhere is known.

    1. `x-original-exchange` / `x-original-routing-key` (the dispatcher's refused requests).
    2. A job from an account queue (`x-reason: account_deleted` from config_svc, or
       `x-original-queue` naming an account queue, from the sender; or, for the broker's own
       dead-lettering, an x-death from an account queue): `mail.send` with the account id, and
       only while the account's queue exists. Before x-death on purpose: a job that once
       waited in a retry queue carries an x-death naming the retry exchange, which would take
       it the long way round and drop it silently if the queue is gone.
    3. The broker's dead-lettering (delivery limit, expiry; no x-reason): the exchange and
       first routing key of the newest x-death entry.
    """
    exchange = letter.header("x-original-exchange")
    if exchange is not None:
        routing_key = letter.header("x-original-routing-key")
        if routing_key is None:
            raise Unreplayable("x-original-exchange without x-original-routing-key")
        return Target(exchange, routing_key, "x-original-exchange / x-original-routing-key")

    by_service = letter.header("x-reason") is not None
    deaths = letter.deaths
    account_id = None
    if by_service:
        account_id = (_account_of_queue(topology, letter.header("x-original-queue"))
                      or (letter.header("x-account-id")
                          if letter.header("x-reason") == ACCOUNT_DELETED else None))
    elif deaths:
        account_id = _account_of_queue(topology, _text(deaths[0].get("queue")))
    if account_id:
        return Target(topology.send_exchange, account_id, "account queue",
                      queue_needed=topology.account_queue(account_id))

    if not by_service and deaths:
        death = deaths[0]
        keys = death.get("routing-keys") or []
        exchange = _text(death.get("exchange"))
        if exchange is None or not keys:
            raise Unreplayable("its x-death entry names no exchange or routing key")
        return Target(exchange, _text(keys[0]) or "", "x-death")
    raise Unreplayable(
        "no x-original-exchange, no account queue and no x-death: nowhere known to send it "
        "back (read it with `dead show` and publish it again by hand if it should go)")


# -- which letters a command takes, and what became of them -----------------------------------


@dataclass(frozen=True)
class Outcome:
    position: int
    message_id: str
    reason: str | None
    action: str  # replayed, would_replay, refused, failed
    target: str | None
    detail: str | None

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "message_id": self.message_id,
                "reason": self.reason, "action": self.action, "target": self.target,
                "detail": self.detail}


def selector(all_: bool, message_ids: Sequence[str], reasons: Sequence[str]
             ) -> Callable[[DeadLetter], bool]:
    ids, wanted = set(message_ids), set(reasons)

    def select(letter: DeadLetter) -> bool:
        if wanted and letter.reason not in wanted:
            return False
        return all_ or letter.message_id in ids or (not ids and bool(wanted))
    return select
