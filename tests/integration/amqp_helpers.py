"""Receiving from queues in tests. Quorum queues with single active consumer refuse basic.get,
so tests consume like the services do."""

import asyncio

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue


async def receive(queue: AbstractQueue, count: int = 1,
                  timeout: float = 10) -> list[AbstractIncomingMessage]:
    """The next `count` messages of `queue`, acked; fails when they do not come in time."""
    received: list[AbstractIncomingMessage] = []
    async with queue.iterator() as messages, asyncio.timeout(timeout):
        async for message in messages:
            await message.ack()
            received.append(message)
            if len(received) == count:
                break
    return received
