"""Upgrading from the first version, whose retry queues were classic queues."""

from typing import Any

import aiormq
import structlog
from aio_pika.abc import AbstractChannel

# The logger's name from before shared.topology became a package: its log lines are unchanged.
log = structlog.get_logger("shared.topology")


async def replace_classic_retry_queue(channel: AbstractChannel, name: str,
                                      arguments: dict[str, Any], send_exchange: str,
                                      dead_exchange: str) -> None:
    """A deployment of an earlier version has its retry queues as classic queues, which a
    declare as quorum refuses (PRECONDITION_FAILED). Their jobs go back to their accounts'
    queues now (retried early, never lost: each is acked after the broker confirmed its
    copy), then the old queue is deleted, so that the caller declares it anew."""
    connection = (await channel.get_underlay_channel()).connection
    probe = await connection.channel()
    try:
        await probe.queue_declare(name, durable=True, arguments=arguments)
        return  # already what it should be, or new
    except aiormq.exceptions.ChannelPreconditionFailed:
        pass
    finally:
        if not probe.is_closed:
            await probe.close()
    mover = await connection.channel(publisher_confirms=True, on_return_raises=True)
    moved = 0
    try:
        while True:
            message = await mover.basic_get(name, no_ack=False)
            if not isinstance(message.delivery, aiormq.spec.Basic.GetOk):
                break
            try:
                await mover.basic_publish(message.body, exchange=send_exchange,
                                          routing_key=message.routing_key or "",
                                          properties=message.header.properties, mandatory=True)
            except aiormq.exceptions.PublishError:  # its account's queue is gone
                await mover.basic_publish(message.body, exchange=dead_exchange,
                                          routing_key=message.routing_key or "",
                                          properties=message.header.properties)
            await mover.basic_ack(message.delivery.delivery_tag)
            moved += 1
        await mover.queue_delete(name, if_unused=False, if_empty=False)
    finally:
        if not mover.is_closed:
            await mover.close()
    log.warning("classic retry queue replaced by a quorum queue", queue=name,
                jobs_sent_back_early=moved)
