"""The dispatcher's composition root: settings, connections, consumer, schedule, API."""

import asyncio
import functools
from pathlib import Path

import structlog

from services.dispatcher.api import create_app
from services.dispatcher.cancel import CancelIntake, Canceller
from services.dispatcher.consumer import RequestConsumer
from services.dispatcher.fanout import FanOut
from services.dispatcher.intake import DeadLetters, Intake
from services.dispatcher.locks import DeliveryLocks
from services.dispatcher.schedule import Schedule
from services.dispatcher.settings import DispatcherSettings
from shared.auth import TokenVerifier
from shared.broker import broker_user
from shared.db import connect
from shared.http import Health, HttpServer
from shared.messages import DeliveryRequest
from shared.runtime import connected, stop_on_signals
from shared.topology import (
    EventPublisher,
    Topology,
    make_message,
    open_confirmed_channel,
    publish,
)

SERVICE = "dispatcher"
MIGRATIONS = Path(__file__).parent / "migrations"
ACCOUNTS_MIGRATIONS = Path(__file__).parents[1] / "config_svc" / "migrations"
log = structlog.get_logger(__name__)



async def serve(settings: DispatcherSettings) -> None:
    verifier = TokenVerifier(settings.jwt_algorithm, settings.jwt_key())
    topology = Topology()
    schemas = {SERVICE: MIGRATIONS, "config_svc": ACCOUNTS_MIGRATIONS}  # it reads accounts
    async with connected(settings, SERVICE, schemas) as (pool, connection):
        confirmed = await open_confirmed_channel(connection)
        await topology.declare(confirmed)
        fanout = await FanOut.open(connection, topology, settings.fanout_window)
        events, dead = EventPublisher(confirmed, topology), DeadLetters(confirmed, topology)
        locks = DeliveryLocks(pool)
        intake = Intake(locks, fanout, events, dead, settings.max_request_bytes)
        canceller = Canceller(pool, events)
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=settings.request_prefetch)
        queue = await consuming.get_queue(topology.requests_queue)
        own_user = broker_user(settings.amqp_url.get_secret_value())
        consumer = RequestConsumer(queue, intake, CancelIntake(canceller, dead),
                                   settings.bypass_users(own_user))
        requests = await confirmed.get_exchange(topology.requests_exchange, ensure=False)

        async def publish_request(request: DeliveryRequest, ignore_suppressions: bool) -> None:
            body = request.model_dump_json(exclude_none=True).encode()
            message = make_message(
                body, message_id=request.delivery_id, type_="delivery.request",
                headers={"x-ignore-suppressions": "true"} if ignore_suppressions else None)
            message.user_id = own_user  # checked by the broker: the intake may trust it
            await publish(requests, "delivery.request", message)

        health = Health()
        health.add_check("broker", lambda: not connection.is_closed)
        health.add_check("database", lambda: not pool.is_closing())
        health.add_check("consuming", lambda: consumer.consuming)
        dsn = settings.postgres_dsn.get_secret_value()
        schedule = Schedule(pool, locks, functools.partial(connect, dsn, settings.db_pooling),
                            fanout, canceller, settings.schedule_poll_s)
        app = create_app(pool, locks, verifier, health, canceller, publish_request,
                         settings.max_request_bytes, schedule.wake)
        server = HttpServer(app, settings.http_host, settings.http_port)
        stop = stop_on_signals()
        await server.start()
        await consumer.start()
        scheduling = asyncio.create_task(schedule.run())
        log.info("dispatcher ready", port=settings.http_port)
        await stop.wait()
        await schedule.stopped(scheduling, settings.shutdown_grace_s)
        await consumer.stop(settings.shutdown_grace_s)
        await server.stop()
