"""`make demo`: publish one sample delivery request to the running `make run` stack."""

import asyncio
import os
import sys
import time

import aio_pika

from shared.messages import DeliveryRequest
from shared.topology import Topology, make_message, open_confirmed_channel, publish


def sample_request() -> DeliveryRequest:
    return DeliveryRequest(
        delivery_id=f"demo-{int(time.time())}",
        requested_by="demo",
        subject="{{name}} 様 11月のお知らせ",
        text="{{name}} 様\n\nYour plan: {{plan}}.\n",
        html="<p>{{name}} 様</p><p>Your plan: <b>{{plan}}</b>.</p>",
        recipients=[
            {"email": "yamada@example.com", "name": "山田 太郎", "vars": {"plan": "gold"}},
            {"email": "suzuki@example.com", "name": "鈴木 花子", "vars": {"plan": "silver"}},
        ],
        headers={"X-Campaign": "demo"},
        metadata={"source": "make demo"},
    )


async def main() -> None:
    url = os.environ.get("MAIL_AMQP_URL")
    if not url:
        sys.exit("MAIL_AMQP_URL is not set: start the stack with `make run` first")
    request = sample_request()
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await open_confirmed_channel(connection)
        exchange = await channel.get_exchange(Topology().requests_exchange)
        await publish(exchange, "delivery.request",
                      make_message(request, message_id=request.delivery_id))
    print(f"published delivery {request.delivery_id} to {len(request.recipients)} recipients; "
          "watch `make run` and .run/mail/")


if __name__ == "__main__":
    asyncio.run(main())
