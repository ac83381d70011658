"""The config service's composition root: settings, connections, API, outbox relay."""

import asyncio
import hashlib
from pathlib import Path

import structlog

from services.config_svc.accounts import AccountService, TestMailConfig
from services.config_svc.api import create_app
from services.config_svc.queues import AccountQueues
from services.config_svc.settings import ConfigSettings
from services.config_svc.ui.routes import mount_ui
from services.config_svc.ui.session import Sessions
from shared.auth import TokenVerifier
from shared.crypto import SecretBox
from shared.http import Health, HttpServer
from shared.outbox import OutboxRelay
from shared.runtime import connected, stop_on_signals
from shared.smtp import client_ssl_context
from shared.topology import Topology, open_confirmed_channel, open_transaction_channel

SERVICE = "config_svc"
MIGRATIONS = Path(__file__).parent / "migrations"
log = structlog.get_logger(__name__)



async def serve(settings: ConfigSettings) -> None:
    box = SecretBox(settings.encryption_keys())
    verifier = TokenVerifier(settings.jwt_algorithm, settings.jwt_key())
    topology = Topology()
    async with connected(settings, SERVICE, {SERVICE: MIGRATIONS}) as (pool, connection):
        api_channel = await open_confirmed_channel(connection)
        await topology.declare(api_channel)
        relay = OutboxRelay(pool, await open_transaction_channel(connection), topology,
                            table="account_outbox", poll_s=settings.outbox_poll_s)
        service = AccountService(
            pool, box, AccountQueues(api_channel, topology), relay.wake,
            TestMailConfig(client_ssl_context(settings.smtp_ca_file),
                           settings.test_mail_timeout_s),
        )
        health = Health()
        health.add_check("broker", lambda: not connection.is_closed)
        health.add_check("database", lambda: not pool.is_closing())
        health.add_check("outbox", lambda: relay.healthy)
        app = create_app(service, verifier, health, settings.max_body_bytes)
        # The screens' CSRF tokens: the same on every replica, never the key itself.
        csrf_key = hashlib.sha256(
            b"mail-ui-csrf:" + settings.encryption_keys()[0].encode()).digest()
        close_ui = mount_ui(app, service, Sessions(verifier, csrf_key),
                            settings.dispatcher_url)
        server = HttpServer(app, settings.http_host, settings.http_port)
        stop = stop_on_signals()
        relay_task = asyncio.create_task(relay.run(), name="outbox")
        await server.start()
        log.info("config_svc ready", port=settings.http_port)
        await stop.wait()
        await server.stop()
        await close_ui()
        relay.stop()
        await relay_task
