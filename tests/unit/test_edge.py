"""The send path's AMQP edge on a fake message and channel: what each disposition does to
the message in hand (acked after its copy is published, given back, or dead-lettered), with
its headers and routing key."""

from dataclasses import dataclass, field
from typing import Any

import pytest
from aio_pika.exceptions import DeliveryError

from services.sender.delivery.disposition import Ack, Requeue, ToDead, ToQueue, ToRetry
from services.sender.delivery.edge import InHand, arrival
from shared.topology import Topology

TOPOLOGY = Topology(retry_delays_s=(30, 120))
BODY = (b'{"job_id": "d:0", "delivery_id": "d", "account_id": "acc-1", "index": 0, '
        b'"email": "r@example.org"}')


@dataclass
class FakeMessage:
    body: bytes = BODY
    message_id: str = "d:0"
    headers: dict = field(default_factory=lambda: {"x-first": "kept"})
    type: str = "send.job"
    acked: int = 0
    nacked: list[bool] = field(default_factory=list)
    channel: Any = None

    async def ack(self) -> None:
        self.acked += 1

    async def nack(self, requeue: bool = True) -> None:
        self.nacked.append(requeue)


class FakeChannel:
    """Exchanges by name; a publish to one named in `refusing` is returned unroutable."""

    def __init__(self, *refusing: str) -> None:
        self.refusing = set(refusing)
        self.published: list[tuple[str, str, Any]] = []
        self.is_closed = False

    async def get_exchange(self, name: str, ensure: bool = True) -> Any:
        channel = self

        class Exchange:
            async def publish(self, message: Any, routing_key: str, **_: Any) -> None:
                if name in channel.refusing:
                    raise DeliveryError(None, None)  # type: ignore[arg-type]
                channel.published.append((name, routing_key, message))

        return Exchange()


def in_hand(channel: FakeChannel, *, urgent: bool = False,
            home: dict | None = None) -> tuple[FakeMessage, InHand]:
    message = FakeMessage(channel=channel)
    return message, InHand(message, arrival(message.body, urgent, home),  # type: ignore[arg-type]
                           TOPOLOGY, channel, "acc-1")  # type: ignore[arg-type]


def test_a_message_is_decoded_once_and_a_bad_one_says_why() -> None:
    assert arrival(BODY, False, None).job.account_id == "acc-1"
    bad = arrival(b'{"job_id": 1}', True, None)
    assert bad.job is None and "delivery_id" in bad.invalid and bad.urgent


async def test_ack_acks_and_requeue_gives_the_message_back_to_its_queue_head() -> None:
    channel = FakeChannel()
    message, hand = in_hand(channel)
    await hand.carry_out(Ack())
    await hand.carry_out(Requeue())
    assert (message.acked, message.nacked, channel.published) == (1, [True], [])


@pytest.mark.parametrize("urgent", [False, True])
async def test_a_retry_goes_to_its_tier_keyed_back_to_the_queue_it_came_from(
        urgent: bool) -> None:
    channel = FakeChannel()
    message, hand = in_hand(channel, urgent=urgent)
    await hand.carry_out(ToRetry(120))
    [(exchange, key, copy)] = channel.published
    assert (exchange, key) == (TOPOLOGY.retry_name(120), TOPOLOGY.send_key("acc-1", urgent))
    assert copy.headers == {"x-first": "kept", "x-retry-delay-s": 120}
    assert copy.body == BODY and copy.message_id == "d:0" and message.acked == 1


async def test_a_dead_letter_names_its_reason_and_the_queue_it_came_from() -> None:
    channel = FakeChannel()
    message, hand = in_hand(channel, urgent=True)
    await hand.carry_out(ToDead("invalid_job", "index: field required"))
    [(exchange, key, copy)] = channel.published
    assert (exchange, key) == (TOPOLOGY.dead_exchange, "acc-1")
    assert copy.headers["x-reason"] == "invalid_job"
    assert copy.headers["x-original-queue"] == TOPOLOGY.urgent_queue("acc-1")
    assert message.acked == 1


async def test_a_job_whose_own_account_has_no_queue_any_more_goes_to_the_dead_letters() -> None:
    channel = FakeChannel(TOPOLOGY.send_exchange)
    message, hand = in_hand(channel)
    await hand.carry_out(ToQueue("acc-gone"))
    [(exchange, _, copy)] = channel.published
    assert (exchange, copy.headers["x-reason"]) == (TOPOLOGY.dead_exchange, "wrong_account")
    assert message.acked == 1


async def test_a_job_that_cannot_go_back_to_its_own_queue_is_not_acked() -> None:
    channel = FakeChannel(TOPOLOGY.send_exchange)
    message, hand = in_hand(channel, home={"id": "acc-home"})
    with pytest.raises(DeliveryError):
        await hand.carry_out(ToQueue("acc-home"))  # the queue it came from: tried again
    assert message.acked == 0 and channel.published == []


def test_a_message_whose_channel_closed_is_no_longer_alive() -> None:
    channel = FakeChannel()
    _, hand = in_hand(channel)
    assert hand.alive()
    channel.is_closed = True
    assert not hand.alive()
