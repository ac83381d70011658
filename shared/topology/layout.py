"""The names and arguments of the contract's exchanges and queues, and their declaration."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractQueue, ExchangeType

from shared.topology.classic_retry import replace_classic_retry_queue


def delay_label(seconds: int) -> str:
    """30 -> '30s', 120 -> '2m', 3600 -> '1h': the suffix of a retry queue's name."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Topology:
    prefix: str = "mail"
    retry_delays_s: tuple[int, ...] = (30, 120, 600, 3600)
    # A request that crashed its consumer this often goes to the dead-letter queue.
    request_delivery_limit: int = 5
    # Generous: pausing an account returns its message in hand, which counts too.
    send_delivery_limit: int = 50

    @property
    def requests_exchange(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def send_exchange(self) -> str:
        return f"{self.prefix}.send"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def requests_queue(self) -> str:
        return f"{self.prefix}.dispatcher.requests"

    def account_queue(self, account_id: str) -> str:
        return f"{self.prefix}.send.{account_id}"

    def urgent_queue(self, account_id: str) -> str:
        """The account's second queue, for `priority: high`: its worker looks there first
        (quorum queues on RabbitMQ 3.10 have no priorities)."""
        return f"{self.prefix}.send.{account_id}.urgent"

    @staticmethod
    def send_key(account_id: str, urgent: bool = False) -> str:
        """The routing key of an account's jobs on `mail.send` and `mail.retry.back`."""
        return f"{account_id}.urgent" if urgent else account_id

    def send_queues(self, account_id: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """(queue, routing key) of the account's normal and urgent queues."""
        return ((self.account_queue(account_id), self.send_key(account_id)),
                (self.urgent_queue(account_id), self.send_key(account_id, urgent=True)))

    def retry_name(self, delay_s: int) -> str:
        """Both the exchange and the queue of one retry tier."""
        return f"{self.prefix}.retry.{delay_label(delay_s)}"

    @property
    def retry_back_exchange(self) -> str:
        """Where a retry goes back to its account's queue when its delay ends: each account
        queue is bound to it too, and what it cannot route (the account's queue is gone) goes
        to `mail.dead` (its alternate exchange) instead of waiting in the retry queue."""
        return f"{self.prefix}.retry.back"

    def retry_queue_arguments(self, delay_s: int) -> dict[str, Any]:
        return {
            # Quorum: replicated, and its dead-lettering back to the account can be
            # at-least-once (a classic queue's is at most once: a job could vanish).
            "x-queue-type": "quorum",
            "x-message-ttl": delay_s * 1000,
            "x-dead-letter-exchange": self.retry_back_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # what at-least-once dead-lettering needs
        }

    def account_queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            # Quorum, not classic: classic single active consumer crashes the queue on
            # RabbitMQ 3.10.8 (rabbitmq-server#5460).
            "x-single-active-consumer": True,
            "x-dead-letter-exchange": self.dead_exchange,
            "x-delivery-limit": self.send_delivery_limit,
        }

    async def declare(self, channel: AbstractChannel) -> None:
        """Exchanges and fixed queues; safe to run from every replica at every start."""
        await channel.declare_exchange(self.requests_exchange, ExchangeType.TOPIC, durable=True)
        await channel.declare_exchange(self.events_exchange, ExchangeType.TOPIC, durable=True)
        send = await channel.declare_exchange(self.send_exchange, ExchangeType.DIRECT, durable=True)
        dead = await channel.declare_exchange(self.dead_exchange, ExchangeType.FANOUT, durable=True)

        dead_queue = await channel.declare_queue(
            self.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_queue.bind(dead, routing_key="")

        requests = await channel.declare_queue(
            self.requests_queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": self.dead_exchange,
                "x-delivery-limit": self.request_delivery_limit,
            },
        )
        for key in ("delivery.request", "delivery.cancel"):
            await requests.bind(self.requests_exchange, routing_key=key)

        await channel.declare_exchange(
            self.retry_back_exchange, ExchangeType.DIRECT, durable=True,
            arguments={"alternate-exchange": dead.name})
        for delay in self.retry_delays_s:
            name = self.retry_name(delay)
            exchange = await channel.declare_exchange(name, ExchangeType.FANOUT, durable=True)
            # Dead-lettering keeps the routing key (the account id), so an expired message
            # lands back in its account's queue through `mail.retry.back`.
            await replace_classic_retry_queue(channel, name, self.retry_queue_arguments(delay),
                                              send.name, dead.name)
            queue = await channel.declare_queue(
                name, durable=True, arguments=self.retry_queue_arguments(delay))
            await queue.bind(exchange, routing_key="")

    async def account_queue_depth(self, channel: AbstractChannel, account_id: str) -> int:
        """Messages ready in the account's queue, asked of the broker now (declaring and
        binding the queue if missing). A robust channel's own declare_queue returns its cached
        first answer."""
        underlay = await channel.get_underlay_channel()
        waiting = 0
        for name, key in self.send_queues(account_id):
            answer = await underlay.queue_declare(
                name, durable=True, arguments=self.account_queue_arguments())
            for exchange in (self.send_exchange, self.retry_back_exchange):
                await underlay.queue_bind(name, exchange, routing_key=key)
            waiting += answer.message_count or 0
        return waiting

    async def queue_depths(self, channel: AbstractChannel,
                           account_ids: Iterable[str]) -> dict[str, int]:
        """Messages ready in each account's two queues, for a list on a screen: one declare a
        queue (with the same arguments, so never refused), no bindings."""
        underlay = await channel.get_underlay_channel()
        depths: dict[str, int] = {}
        for account_id in account_ids:
            depths[account_id] = 0
            for name, _key in self.send_queues(account_id):
                answer = await underlay.queue_declare(
                    name, durable=True, arguments=self.account_queue_arguments())
                depths[account_id] += answer.message_count or 0
        return depths

    async def declare_account_queue(
        self, channel: AbstractChannel, account_id: str
    ) -> AbstractQueue:
        """The account's queue and its urgent queue; returns the first."""
        return (await self.declare_account_queues(channel, account_id))[0]

    async def declare_account_queues(
        self, channel: AbstractChannel, account_id: str
    ) -> tuple[AbstractQueue, AbstractQueue]:
        queues = []
        for name, key in self.send_queues(account_id):
            queue = await channel.declare_queue(
                name, durable=True, arguments=self.account_queue_arguments())
            await queue.bind(self.send_exchange, routing_key=key)
            await queue.bind(self.retry_back_exchange, routing_key=key)
            queues.append(queue)
        return queues[0], queues[1]
