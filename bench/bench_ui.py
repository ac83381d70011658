"""The admin screens' server times and page weights: each page rendered 200 times in process
(httpx's ASGI transport: no network), beside the JSON API answering the same question in the
same run, on a stack's PostgreSQL and RabbitMQ with 40 accounts.

    make bench    (or, with a stack's settings loaded: python bench/bench_ui.py)
"""

import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import httpx
import jwt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service_process import run_benchmark
from services.config_svc.accounts import AccountService, TestMailConfig
from services.config_svc.api import create_app
from services.config_svc.main import MIGRATIONS, SERVICE
from services.config_svc.queues import AccountQueues
from services.config_svc.ui.routes import mount_ui
from services.config_svc.ui.session import Sessions
from shared.auth import ADMIN_ROLE, TokenVerifier
from shared.crypto import SecretBox
from shared.db import create_pool, migrate
from shared.http import Health
from shared.smtp import client_ssl_context
from shared.topology import Topology, open_confirmed_channel

SECRET = "bench-ui-secret-of-at-least-32-bytes"
ROUNDS = 200
ACCOUNTS = 40


async def timed(client: httpx.AsyncClient, url: str, **options: object) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(ROUNDS):
        started = time.perf_counter()
        answer = await client.get(url, **options)
        times.append(time.perf_counter() - started)
        assert answer.status_code == 200, (url, answer.status_code)
        size = len(answer.content)
    return statistics.median(times) * 1000, size


async def main() -> None:
    pool = await create_pool(os.environ["MAIL_POSTGRES_DSN"])
    connection = await aio_pika.connect_robust(os.environ["MAIL_AMQP_URL"])
    try:
        async with pool.acquire() as db:
            await migrate(db, SERVICE, MIGRATIONS)
        channel = await open_confirmed_channel(connection)
        topology = Topology(prefix=f"bench-ui-{uuid.uuid4().hex[:6]}")
        await topology.declare(channel)
        box = SecretBox([SecretBox.generate_key()])
        service = AccountService(pool, box, AccountQueues(channel, topology), lambda: None,
                                 TestMailConfig(client_ssl_context(), 5))
        verifier = TokenVerifier("HS256", SECRET)
        app = create_app(service, verifier, Health(), 65536)
        mount_ui(app, service, Sessions(verifier, b"k" * 32), "http://127.0.0.1:9")
        token = jwt.encode({"sub": "bench", "roles": [ADMIN_ROLE], "exp": time.time() + 3600},
                           SECRET, algorithm="HS256")
        unique = uuid.uuid4().hex[:6]
        ids = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://ui") as client:
            for index in range(ACCOUNTS):
                answer = await client.post("/v1/accounts", json={
                    "name": f"bench {unique} {index}", "from_address": "news@example.com",
                    "smtp_host": "127.0.0.1", "smtp_port": 25, "tls": "none"},
                    headers={"Authorization": f"Bearer {token}"})
                ids.append(answer.json()["id"])
            for account_id in ids:
                await topology.declare_account_queue(channel, account_id)
            client.cookies.set("mail_session", token)
            api = {"headers": {"Authorization": f"Bearer {token}"}}
            rows = [
                ("accounts list (20 rows)", f"/ui/accounts?q=bench+{unique}", {}),
                ("  baseline: GET /v1/accounts, same search", f"/v1/accounts?q=bench+{unique}"
                 "&limit=20", api),
                ("registration form", "/ui/accounts/new", {}),
                ("an account's page", f"/ui/accounts/{ids[0]}", {}),
                ("  baseline: GET /v1/accounts/{id}", f"/v1/accounts/{ids[0]}", api),
                ("sign in", "/ui/signin", {}),
            ]
            print(f"| page | p50 of {ROUNDS} renders | bytes |")
            print("|---|---:|---:|")
            for name, url, options in rows:
                p50, size = await timed(client, url, **options)
                print(f"| {name} | {p50:.2f} ms | {size:,} |", flush=True)
            for asset in ("ui.css", "ui.js"):
                answer = await client.get(f"/ui/static/{asset}")
                print(f"| /ui/static/{asset} (once, cached) | | {len(answer.content):,} |")
        await pool.execute("DELETE FROM accounts WHERE id = ANY($1::uuid[])", ids)
    finally:
        await connection.close()
        await pool.close()


if __name__ == "__main__":
    run_benchmark("bench_ui", main)
