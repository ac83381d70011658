"""The account consumers' channels (services/sender/consumers/channels.py): subscriptions
made at once spread over several channels, every pair registered once, no channel over its share."""

import asyncio
import uuid

from aio_pika.abc import AbstractRobustConnection

from services.sender.consumers.channels import SPREAD_CHANNELS, ConsumerChannels
from shared.topology import Topology, open_confirmed_channel


async def test_subscriptions_made_at_once_spread_over_channels_within_their_share(
    amqp: AbstractRobustConnection, amqp_url: str, unique: str,
) -> None:
    topology = Topology(prefix=unique)
    channel = await open_confirmed_channel(amqp)
    await topology.declare(channel)
    accounts = [str(uuid.uuid4()) for _ in range(60)]
    more = [str(uuid.uuid4()) for _ in range(30)]
    lost: list[str] = []
    consumers = ConsumerChannels(amqp_url, f"test {unique}", topology, 25,
                                 lambda ids, _why: lost.extend(ids))

    async def on_message(_message: object, _urgent: bool) -> None:
        return None

    try:
        tags = await asyncio.gather(*(consumers.consume(a, on_message) for a in accounts))
        assert len({tag for _queue, tag in tags}) == 60
        slots = consumers._slots
        assert 3 <= len(slots) <= SPREAD_CHANNELS  # spread, yet not a channel a consumer
        assert all(len(slot.tags) <= 25 for slot in slots)
        assert all(slot.reserved == 0 for slot in slots)
        assert sorted(a for slot in slots for a in slot.tags.values()) == sorted(accounts)
        # One after the other, they fill channels in turn.
        for account_id in more:
            await consumers.consume(account_id, on_message)
        assert all(len(slot.tags) <= 25 for slot in consumers._slots)
        assert len(consumers._slots) <= len(slots) + 2
        assert lost == []
    finally:
        await consumers.close()
        for account_id in accounts + more:
            for name, _key in topology.send_queues(account_id):
                await channel.queue_delete(name)
        await channel.close()
