"""The account consumers' own broker connection and channels, about a hundred consumers each.

Not a robust connection, on purpose. aio-pika's robust channel restores what it once declared
and consumed: after a reconnect, or after the broker cancelled a consumer because its queue
was deleted, it re-declares the queue (a deleted account's queue comes back) and consumes it
again, beside our own bookkeeping. Here the supervisor alone decides what is consumed, from
the accounts table: whatever is lost (a connection, a channel that failed, a consumer the
broker cancelled) is reported through `on_lost`, and the supervisor subscribes again what
should be consumed.

Each account has two queues, its own and its urgent one (`priority: high`), consumed as a
pair on one channel, prefetch 1 each, by the same worker; the pair is subscribed, cancelled
and lost together.
"""

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

from shared.broker import Nodes
from shared.topology import Topology

log = structlog.get_logger(__name__)

LostHook = Callable[[list[str], str], None]
OnMessage = Callable[[Any, bool], Awaitable[None]]  # (message, from the urgent queue)


# Subscriptions on their way on one channel before another channel is opened for more, up
# to this many channels (beyond, a full channel alone opens one).
IN_FLIGHT_PER_CHANNEL = 2
SPREAD_CHANNELS = 16


class ConsumerGone(Exception):
    pass


async def _deliver(on_message: OnMessage, urgent: bool, message: Any) -> None:
    await on_message(message, urgent)


@dataclass(eq=False)
class _Slot:
    channel: AbstractChannel
    tags: dict[str, str] = field(default_factory=dict)  # consumer tag -> account id
    # normal queue's consumer tag -> the urgent queue and its consumer tag, and back
    urgent: dict[str, tuple[AbstractQueue, str]] = field(default_factory=dict)
    pair_of: dict[str, str] = field(default_factory=dict)
    # tags the broker cancelled before they were registered (between the pair's two consumes)
    gone: set[str] = field(default_factory=set)
    reserved: int = 0  # subscriptions on their way on this channel

    @property
    def load(self) -> int:
        return len(self.tags) + self.reserved


class ConsumerChannels:
    def __init__(self, url: str, name: str, topology: Topology, per_channel: int,
                 on_lost: LostHook) -> None:
        self._nodes = Nodes(url)  # after a loss, the next node of a cluster first
        self._name = name
        self._topology = topology
        self._per_channel = per_channel
        self._on_lost = on_lost
        self._connection: AbstractConnection | None = None
        self._slots: list[_Slot] = []
        self._closing = False
        self._placing = asyncio.Lock()  # one choice of channel at a time

    @property
    def is_open(self) -> bool:
        # A connection the broker closed is not `is_closed` (that is only for close()).
        connection = self._connection
        return (connection is not None and not connection.is_closed
                and connection.connected.is_set())

    async def consume(self, account_id: str, on_message: OnMessage) -> tuple[AbstractQueue, str]:
        """Consumes the account's two queues; returns its own queue and consumer tag, which
        stand for the pair."""
        try:
            slot = await self._slot_with_room()
        except Exception:
            self._forget_connection()
            raise
        try:
            return await self._consume_on(slot, account_id, on_message)
        finally:
            slot.reserved -= 1

    async def _consume_on(self, slot: _Slot, account_id: str,
                          on_message: OnMessage) -> tuple[AbstractQueue, str]:
        urgent_tag: str | None = None
        try:
            queue, urgent = await self._topology.declare_account_queues(slot.channel,
                                                                         account_id)
            urgent_tag = await urgent.consume(functools.partial(_deliver, on_message, True))
            tag = await queue.consume(functools.partial(_deliver, on_message, False))
        except Exception:
            # A channel whose command failed may be closed, or out of step with the broker:
            # closed here; the consumers it carried are reported lost and moved.
            await self._discard(slot, "a command on the channel failed")
            raise
        except BaseException:  # cancelled half-way (a shutdown): no consumer left behind
            if urgent_tag is not None:
                with contextlib.suppress(Exception):
                    await urgent.cancel(urgent_tag)
            raise
        if slot.gone & {tag, urgent_tag}:
            # The broker cancelled one of the pair as it was subscribed (its queue deleted,
            # or its leader lost): the other goes too, and the subscription fails.
            slot.gone -= {tag, urgent_tag}
            await self._cancel_consumers(slot, [tag, urgent_tag])
            raise ConsumerGone(f"the broker cancelled a consumer of account {account_id}")
        slot.tags[tag] = account_id
        slot.urgent[tag] = (urgent, urgent_tag)
        slot.pair_of[urgent_tag] = tag
        return queue, tag

    async def cancel(self, queue: AbstractQueue, tag: str) -> None:
        pairs = []
        for slot in self._slots:
            slot.tags.pop(tag, None)
            if (pair := slot.urgent.pop(tag, None)) is not None:
                slot.pair_of.pop(pair[1], None)
                pairs.append(pair)
        with contextlib.suppress(Exception):  # a closed channel has no consumer anyway
            await queue.cancel(tag)
        for urgent, urgent_tag in pairs:
            with contextlib.suppress(Exception):
                await urgent.cancel(urgent_tag)

    def _forget_connection(self) -> None:
        """A connection that cannot open a channel is given up; the next try connects anew."""
        connection, self._connection, self._slots = self._connection, None, []
        if connection is not None and not connection.is_closed:
            task = asyncio.ensure_future(connection.close())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        self._closing = True
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _slot_with_room(self) -> _Slot:
        """A channel with room, its place reserved. Subscriptions made at once spread over
        channels (the commands of one channel go one after the other): the least loaded one
        with room, or a new one while each has a few on their way."""
        async with self._placing:
            if not self.is_open:
                await self._connect()
            open_slots = [s for s in self._slots
                          if s.load < self._per_channel and not s.channel.is_closed]
            free = [s for s in open_slots if s.reserved < IN_FLIGHT_PER_CHANNEL]
            slot = min(free or open_slots, key=lambda s: s.load, default=None)
            if slot is None or (not free and len(self._slots) < SPREAD_CHANNELS):
                slot = await self._new_slot()
            slot.reserved += 1
            return slot

    async def _new_slot(self) -> _Slot:
        channel = await self._connection_open().channel()
        await channel.set_qos(prefetch_count=1)  # per consumer: global is off
        slot = _Slot(channel)
        channel.close_callbacks.add(lambda _ch, error: self._lost_slot(slot, str(error)))
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(
            lambda frame: self._cancelled(slot, frame.consumer_tag))
        self._slots.append(slot)
        return slot

    def _connection_open(self) -> AbstractConnection:
        assert self._connection is not None
        return self._connection

    async def _connect(self) -> None:
        self._slots = []
        connection = await self._nodes.connect(
            client_properties={"connection_name": self._name})
        connection.close_callbacks.add(self._lost_connection)
        self._connection = connection
        log.info("consumers' connection open")

    # -- losses -------------------------------------------------------------------------

    def _lost_connection(self, connection: Any, error: BaseException | None) -> None:
        if connection is not self._connection:
            return
        lost = [account for slot in self._slots for account in slot.tags.values()]
        self._slots = []
        self._connection = None  # the next subscription connects again
        if not self._closing:
            log.warning("consumers' connection lost", error=str(error), consumers=len(lost))
            self._on_lost(lost, "connection lost")

    def _lost_slot(self, slot: _Slot, error: str) -> None:
        if slot not in self._slots:
            return
        self._slots.remove(slot)
        lost, slot.tags = list(slot.tags.values()), {}
        if not self._closing and lost:
            log.warning("a consumers' channel closed", error=error, consumers=len(lost))
            self._on_lost(lost, "channel closed")

    def _cancelled(self, slot: _Slot, tag: str) -> None:
        # Either queue of a pair: the other one's consumer is cancelled too, and the pair is
        # subscribed again as one.
        tag = slot.pair_of.pop(tag, None) or tag
        account = slot.tags.pop(tag, None)
        pair = slot.urgent.pop(tag, None)
        if account is None:
            slot.gone.add(tag)  # not registered yet: `consume` sees it when it registers
            return
        partners = [tag] + ([pair[1]] if pair else [])
        for each in partners:
            slot.pair_of.pop(each, None)
        task = asyncio.ensure_future(self._cancel_consumers(slot, partners))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        if not self._closing:
            # The queue was deleted (an account removed) or lost its leader in a cluster.
            log.warning("consumer cancelled by the broker", account_id=account)
            self._on_lost([account], "cancelled by the broker")

    @staticmethod
    async def _cancel_consumers(slot: _Slot, tags: list[str]) -> None:
        """The broker cancelled one of them: the other goes too (cancelling the one already
        gone is harmless)."""
        underlay = await slot.channel.get_underlay_channel()
        for tag in tags:
            with contextlib.suppress(Exception):
                await underlay.basic_cancel(tag)

    async def _discard(self, slot: _Slot, why: str) -> None:
        self._lost_slot(slot, why)
        with contextlib.suppress(Exception):
            await slot.channel.close()
