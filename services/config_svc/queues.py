"""The broker side of an account's life: its queue is declared on creation and, on a forced
delete, its waiting messages are moved to `mail.dead` before the queue goes."""

import asyncio

import structlog
from aio_pika.abc import AbstractChannel, AbstractQueue

from shared.topology import Topology, make_message, publish

log = structlog.get_logger(__name__)


class AccountQueues:
    def __init__(self, channel: AbstractChannel, topology: Topology,
                 move_timeout_s: float = 30) -> None:
        # A confirmed channel: a message moved to mail.dead is acked only once it is there.
        self._channel = channel
        self._topology = topology
        self._move_timeout_s = move_timeout_s

    async def declare(self, account_id: str) -> None:
        await self._topology.declare_account_queue(self._channel, account_id)

    async def waiting(self, account_id: str) -> int:
        """Messages ready in the account's queue."""
        return await self._topology.account_queue_depth(self._channel, account_id)

    async def waiting_in(self, account_ids: list[str]) -> dict[str, int]:
        """Messages ready in each account's queues (a list on a screen)."""
        return await self._topology.queue_depths(self._channel, account_ids)

    async def remove(self, account_id: str, reason: str) -> int:
        """Moves what waits in the account's two queues to mail.dead (reason in headers), then
        deletes them.

        Quorum queues refuse an if-empty delete, so the depth is checked again after moving:
        a message that arrived meanwhile (a retry coming back) is moved too, not dropped.
        """
        moved = 0
        queues = await self._topology.declare_account_queues(self._channel, account_id)
        underlay = await self._channel.get_underlay_channel()
        while True:
            found = 0
            for queue in queues:
                declared = await underlay.queue_declare(queue.name, passive=True)
                if waiting := declared.message_count or 0:
                    found += waiting
                    moved += await self._move_to_dead(queue, account_id, reason, waiting)
            if not found:
                break
        for queue in queues:
            await queue.delete(if_unused=False, if_empty=False)
        log.info("account queues removed", account_id=account_id, moved_to_dead=moved,
                 reason=reason)
        return moved

    async def _move_to_dead(self, queue: AbstractQueue, account_id: str, reason: str,
                            count: int) -> int:
        """Consumes `count` messages into mail.dead. A consumer, not basic.get: quorum queues
        with single active consumer refuse basic.get. While a sender is still the active
        consumer, ours waits; the timeout turns that into an error rather than a hang."""
        dead = await self._channel.get_exchange(self._topology.dead_exchange, ensure=False)
        moved = 0
        async with queue.iterator() as messages, asyncio.timeout(self._move_timeout_s):
            async for message in messages:
                headers = {**(message.headers or {}), "x-reason": reason,
                           "x-original-queue": queue.name, "x-account-id": account_id}
                copy = make_message(message.body, message_id=message.message_id or "",
                                    headers=headers, type_=message.type)
                await publish(dead, message.routing_key or "", copy)
                await message.ack()
                moved += 1
                if moved == count:
                    break
        return moved
