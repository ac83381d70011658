"""The sender's composition root: settings, connections, supervisor, probes."""

import asyncio
import contextlib
import gc
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from services.sender.bounces.intake import BounceIntake
from services.sender.bounces.reader import BounceReaders, MailboxPoller
from services.sender.bounces.verp import Verp
from services.sender.consumers.supervisor import Supervisor
from services.sender.delivery.recorder import DatabaseHealth
from services.sender.parts import Composers, SenderParts, SmtpSessions
from services.sender.settings import SenderSettings
from services.sender.store.send import PoolStore
from services.sender.sweep import sweep_forever
from shared.crypto import SecretBox
from shared.db import create_stateless_pool
from shared.http import Health, HttpServer, health_app
from shared.outbox import OutboxRelay
from shared.runtime import connected, stop_on_signals
from shared.smtp import client_ssl_context
from shared.topology import (
    Topology,
    open_confirmed_channel,
    open_transaction_channel,
)

SERVICE = "sender"
MIGRATIONS = Path(__file__).parent / "migrations"
NEEDED = {
    "config_svc": Path(__file__).parents[1] / "config_svc" / "migrations",
    "dispatcher": Path(__file__).parents[1] / "dispatcher" / "migrations",
    SERVICE: MIGRATIONS,
}
log = structlog.get_logger(__name__)
GC_THRESHOLDS = (10_000, 20, 100)  # Python's: (700, 10, 10)



def _supervisor(settings: SenderSettings, pool: Any, connection: Any, publishing: Any,
                topology: Topology, box: SecretBox, ssl_context: Any, relay: OutboxRelay,
                database: DatabaseHealth, verp: Verp) -> Supervisor:
    sends = PoolStore(pool)
    return Supervisor(connection, SenderParts(
        pool=pool, settings=settings, box=box, ssl_context=ssl_context, topology=topology,
        publish_channel=publishing, composers=Composers(sends), wake_events=relay.wake,
        database=database, verp=verp, store=sends,
        sessions=SmtpSessions(box, ssl_context, settings)),
        amqp_url=settings.amqp_url.get_secret_value())


async def serve(settings: SenderSettings) -> None:
    box = SecretBox(settings.encryption_keys())
    topology = Topology(retry_delays_s=settings.retry_tiers())
    # The sender keeps no session state on its connections: no reset query on each release.
    async with connected(settings, f"{SERVICE} {settings.replica_id}", NEEDED,
                         create_stateless_pool) as (pool, connection):
        publishing = await open_confirmed_channel(connection)
        await topology.declare(publishing)
        relay = OutboxRelay(pool, await open_transaction_channel(connection), topology,
                            table="sender_outbox", poll_s=settings.outbox_poll_s,
                            linger_s=settings.outbox_linger_ms / 1000)
        database = DatabaseHealth()
        ssl_context = client_ssl_context(settings.smtp_ca_file)
        verp = Verp(settings.encryption_keys())
        supervisor = _supervisor(settings, pool, connection, publishing, topology, box,
                                 ssl_context, relay, database, verp)
        readers = BounceReaders(pool, box, MailboxPoller(
            pool, BounceIntake(pool, verp, soft_limit=settings.bounce_soft_limit,
                               soft_window=timedelta(days=settings.bounce_soft_window_days)),
            ssl_context, settings.replica_id,
            timeout_s=settings.bounce_timeout_s, lease_ttl_s=settings.bounce_lease_ttl_s,
            batch=settings.bounce_batch), settings.reconcile_s)
        health = Health()
        health.add_check("broker", lambda: not connection.is_closed)
        # Refused while the sender's writes fail (jobs wait in hand for the database).
        health.add_check("database", lambda: not pool.is_closing() and database.healthy)
        # False while an account that should be consumed here is not (a lost channel).
        health.add_check("consuming", lambda: supervisor.consuming_all)
        health.add_check("outbox", lambda: relay.healthy)
        server = HttpServer(health_app(health), settings.http_host, settings.http_port)
        stop = stop_on_signals()
        relay_task = asyncio.create_task(relay.run(), name="outbox")
        bounces = asyncio.create_task(readers.run(), name="bounce mailboxes")
        sweep = asyncio.create_task(sweep_forever(
            pool, settings.sweep_s, timedelta(seconds=settings.sweep_grace_s), relay.wake),
            name="sweep")
        await server.start()
        await supervisor.start()
        # What exists now lives as long as the process: keep the collector's full passes
        # off it (they paused the sender ~95 ms every few seconds at 500 mails/s).
        gc.freeze()
        # Fewer, not longer, passes: young objects here die by reference count, and each
        # full pass over what start-up left unfrozen (sessions, pool connections, cached
        # composers) stopped the loop for 15-60 ms, 16 times a minute at 500 mails/s.
        gc.set_threshold(*GC_THRESHOLDS)
        log.info("sender ready", replica=settings.replica_id,
                 accounts=len(supervisor.workers))
        await stop.wait()
        sweep.cancel()
        bounces.cancel()
        # A pass in hand ends with its transaction or rolls back; never waited on for long:
        # the sends in hand matter more.
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(bounces, timeout=5)
        await supervisor.stop(settings.shutdown_grace_s)
        relay.stop()
        await relay_task
        await server.stop()
