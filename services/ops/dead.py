"""Reading and replaying the dead-letter queue `mail.dead` without losing a message: the
broker's side (what a letter is, and where a replay sends it: `services.ops.letters`).

Reading: every message of the queue is taken with basic.get without an ack and held; when done,
each one is given back with basic.nack(requeue=True), in the order read. A quorum queue puts a
returned message at its back (measured on RabbitMQ 3.10), so reading the whole queue and
returning it in order leaves the order as it was; a message dead-lettered while the CLI reads
lands before the returned ones. Nothing is lost when the CLI dies: the broker returns the
unacked messages of a closed channel.

Reading is not free of effects: each return counts as a delivery (`x-delivery-count`).
RabbitMQ 4.0 to 4.2 give quorum queues a default delivery limit of 20 and count every return
(4.3 counts basic.reject only, not basic.nack), and `mail.dead` has no dead-letter exchange, so
a message read twenty times would be dropped there. A message whose count reached `RENEW_AT`
is therefore given back as a fresh copy instead (published to the queue with a confirm, then
the old one acked), whose count starts again at zero; a crash between the two leaves a second
copy, never none.

The management console's "Get messages" (Nack message requeue true) does the same basic.get
and requeue: it moves the messages it shows to the back of the queue and counts a delivery.

Replaying publishes a copy (confirm + mandatory: an unroutable copy is an error and the
original stays) to where the message came from, then acks the original.
"""

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import ChannelNotFoundEntity

from services.ops.errors import OpsError
from services.ops.letters import DeadLetter, Outcome, Target, Unreplayable, plan
from services.ops.letters import selector as selector  # re-exported: `replay` takes its pick
from shared.topology import Topology, open_confirmed_channel, publish

RENEW_AT = 10  # deliveries after which a message read is given back as a fresh copy
MAX_READ = 10_000
# What dead-lettering added; a replayed copy goes out without it.
BOOKKEEPING = frozenset({
    "x-reason", "x-detail", "x-death", "x-delivery-count",
    "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
    "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
})


# -- whether a replay's target is there -------------------------------------------------------


async def _exists(connection: AbstractConnection, kind: str, name: str) -> bool:
    """A passive declare on a channel of its own (a missing one closes the channel)."""
    if kind == "exchange" and name == "":
        return True
    channel = await connection.channel()
    try:
        if kind == "queue":
            await channel.declare_queue(name, passive=True)
        else:
            await channel.declare_exchange(name, passive=True)
        return True
    except ChannelNotFoundEntity:
        return False
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def check(connection: AbstractConnection, target: Target,
                known: dict[tuple[str, str], bool] | None = None) -> None:
    """Raises Unreplayable when the target's exchange (or the account's queue) is missing.
    `known` keeps the answers for a run over many messages."""
    known = {} if known is None else known

    async def exists(kind: str, name: str) -> bool:
        if (kind, name) not in known:
            known[kind, name] = await _exists(connection, kind, name)
        return known[kind, name]

    if target.queue_needed and not await exists("queue", target.queue_needed):
        raise Unreplayable(
            f"the account's queue {target.queue_needed} does not exist (account deleted?); "
            "a job cannot be sent by another account: request the delivery again instead")
    if not await exists("exchange", target.exchange):
        raise Unreplayable(f"the exchange {target.exchange!r} does not exist")


async def resolve(connection: AbstractConnection, letter: DeadLetter, topology: Topology,
                  known: dict[tuple[str, str], bool] | None = None) -> Target:
    target = plan(letter, topology)
    await check(connection, target, known)
    return target


def replay_copy(message: AbstractIncomingMessage, keep_bookkeeping: bool = False,
                **extra_headers: Any) -> aio_pika.Message:
    headers = {key: value for key, value in (message.headers or {}).items()
               if keep_bookkeeping or key not in BOOKKEEPING}
    headers.pop("x-delivery-count", None)
    headers.update(extra_headers)
    return aio_pika.Message(
        message.body, headers=headers, content_type=message.content_type,
        content_encoding=message.content_encoding, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority, correlation_id=message.correlation_id,
        reply_to=message.reply_to, message_id=message.message_id, timestamp=message.timestamp,
        type=message.type, app_id=message.app_id,
    )


# -- the queue, held --------------------------------------------------------------------------


class DeadQueue:
    """`async with DeadQueue(...) as dead:` reads every message of `mail.dead` (up to
    `max_read`) and holds it; on leaving, every message not replayed is given back in order."""

    def __init__(self, connection: AbstractConnection, topology: Topology,
                 max_read: int = MAX_READ,
                 needs_body: Callable[[DeadLetter], bool] = lambda _letter: False) -> None:
        """`needs_body`: which letters a replay will publish; of the others only the start
        of the body is held (a renewal, which publishes a copy, keeps its whole body too)."""
        self._connection = connection
        self._topology = topology
        self._max_read = max_read
        self._needs_body = needs_body
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self.letters: list[DeadLetter] = []
        self.truncated = False  # max_read reached: more messages wait behind
        self._settled: set[int] = set()

    async def __aenter__(self) -> "DeadQueue":
        # One confirmed channel for reading, replaying and giving back, so that they happen
        # in the order issued.
        self._channel = await open_confirmed_channel(self._connection)
        try:
            self._queue = await self._channel.declare_queue(
                self._topology.dead_queue, passive=True)
        except ChannelNotFoundEntity:
            raise OpsError(f"the queue {self._topology.dead_queue} does not exist") from None
        while len(self.letters) < self._max_read:
            message = await self._queue.get(no_ack=False, fail=False, timeout=30)
            if message is None:
                break
            letter = DeadLetter(len(self.letters) + 1, message)
            if letter.delivery_count < RENEW_AT and not self._needs_body(letter):
                letter.keep_only_preview()
            self.letters.append(letter)
        else:  # basic.get-ok says how many remain behind the last one read
            self.truncated = bool(self.letters and self.letters[-1].message.message_count)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.give_back()
        finally:
            if self._channel is not None and not self._channel.is_closed:
                with contextlib.suppress(Exception):
                    await self._channel.close()

    @property
    def open(self) -> bool:
        return self._channel is not None and not self._channel.is_closed

    async def give_back(self) -> None:
        assert self._channel is not None
        for letter in self.letters:
            if letter.position in self._settled or self._channel.is_closed:
                continue  # a closed channel has given its messages back already
            self._settled.add(letter.position)
            if letter.delivery_count >= RENEW_AT:
                try:
                    # Through the mail.dead exchange, not the default one: mail-ops may
                    # write only to the project's exchanges.
                    dead = await self._channel.get_exchange(self._topology.dead_exchange,
                                                            ensure=False)
                    await publish(dead, self._topology.dead_queue,
                                  replay_copy(letter.message, keep_bookkeeping=True))
                except Exception:  # give the old copy back rather than lose anything
                    await letter.message.nack(requeue=True)
                else:
                    await letter.message.ack()
            else:
                await letter.message.nack(requeue=True)

    def find(self, key: str) -> list[DeadLetter]:
        """By message id; else, when `key` is a number, the message at that position."""
        found = [letter for letter in self.letters if letter.message_id == key]
        if not found and key.isdigit() and 1 <= int(key) <= len(self.letters):
            found = [self.letters[int(key) - 1]]
        return found

    async def replay(self, letter: DeadLetter, target: Target) -> None:
        """Publishes the copy (confirm + mandatory), then acks the original."""
        assert self._channel is not None
        if not letter.whole:
            raise OpsError(f"message {letter.position} was read for a preview only")
        copy = replay_copy(letter.message, **{"x-replayed-at": datetime.now(UTC).isoformat()})
        if target.exchange == "":
            exchange = self._channel.default_exchange
        else:
            exchange = await self._channel.get_exchange(target.exchange, ensure=False)
        await publish(exchange, target.routing_key, copy)
        self._settled.add(letter.position)
        await letter.message.ack()


async def replay(connection: AbstractConnection, topology: Topology,
                 select: Callable[[DeadLetter], bool], dry_run: bool,
                 max_read: int = MAX_READ) -> tuple[list[Outcome], bool]:
    """Replays the selected messages; returns what happened to each, and whether mail.dead
    held more than `max_read` (those behind were not looked at)."""
    outcomes: list[Outcome] = []
    known: dict[tuple[str, str], bool] = {}
    async with DeadQueue(connection, topology, max_read, needs_body=select) as dead:
        for letter in dead.letters:
            if not select(letter):
                continue
            base = {"position": letter.position, "message_id": letter.message_id,
                    "reason": letter.reason}
            try:
                target = await resolve(connection, letter, topology, known)
            except Unreplayable as refusal:
                outcomes.append(Outcome(**base, action="refused", target=None,
                                        detail=str(refusal)))
                continue
            if dry_run:
                outcomes.append(Outcome(**base, action="would_replay", target=str(target),
                                        detail=target.why))
                continue
            try:
                await dead.replay(letter, target)
            except Exception as error:  # unroutable, nacked, timed out: it stays in mail.dead
                outcomes.append(Outcome(**base, action="failed", target=str(target),
                                        detail=f"{type(error).__name__}: {error}"))
                if not dead.open:
                    break  # the channel is gone and has given every held message back
                continue
            outcomes.append(Outcome(**base, action="replayed", target=str(target),
                                    detail=target.why))
        truncated = dead.truncated
    return outcomes, truncated
