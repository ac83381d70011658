"""The dispatcher's composition root: settings, connections, consumer, status API."""

from pathlib import Path

import structlog

from services.dispatcher.api import create_app
from services.dispatcher.consumer import RequestConsumer
from services.dispatcher.fanout import FanOut
from services.dispatcher.intake import DeadLetters, Intake
from services.dispatcher.settings import DispatcherSettings
from shared.auth import TokenVerifier
from shared.http import Health, HttpServer
from shared.runtime import connected, stop_on_signals
from shared.topology import EventPublisher, Topology, open_confirmed_channel

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
        intake = Intake(
            pool, await FanOut.open(connection, topology, settings.fanout_window),
            EventPublisher(confirmed, topology), DeadLetters(confirmed, topology),
            settings.max_request_bytes,
        )
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=settings.request_prefetch)
        queue = await consuming.get_queue(topology.requests_queue)
        consumer = RequestConsumer(queue, intake)

        health = Health()
        health.add_check("broker", lambda: not connection.is_closed)
        health.add_check("database", lambda: not pool.is_closing())
        health.add_check("consuming", lambda: consumer.consuming)
        server = HttpServer(create_app(pool, verifier, health), settings.http_host,
                            settings.http_port)
        stop = stop_on_signals()
        await server.start()
        await consumer.start()
        log.info("dispatcher ready", port=settings.http_port)
        await stop.wait()
        await consumer.stop(settings.shutdown_grace_s)
        await server.stop()
