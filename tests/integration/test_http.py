import httpx
from prometheus_client import Counter

from shared.http import Health, HttpServer, health_app
from tests.support.processes import free_port

probe_counter = Counter("test_probe_total", "A counter that only this test increments.")


async def test_probes_and_metrics_are_served() -> None:
    health = Health()
    broker_up = {"value": False}
    health.add_check("broker", lambda: broker_up["value"])
    port = free_port()
    server = HttpServer(health_app(health), "127.0.0.1", port)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            assert (await client.get("/healthz")).status_code == 200

            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["checks"] == {"broker": False}

            broker_up["value"] = True
            assert (await client.get("/readyz")).status_code == 200

            probe_counter.inc()
            metrics = await client.get("/metrics")
            assert "test_probe_total 1.0" in metrics.text
    finally:
        await server.stop()
