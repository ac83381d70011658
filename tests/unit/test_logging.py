import io
import logging

import orjson
import pytest
import structlog

from shared.logging import configure_logging, names_secret, register_secret

CANARY = "canary-Pa55w0rd-7f3a9c"


@pytest.fixture
def output() -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=stream)
    yield stream
    configure_logging(level="info", fmt="json", stream=io.StringIO())


def test_a_canary_password_never_reaches_the_output(output: io.StringIO) -> None:
    register_secret(CANARY)
    log = structlog.get_logger("test")

    log.info("bound field", password=CANARY, smtp_password=CANARY)
    log.bind(account={"pop_password": CANARY, "name": "shop"}).info("nested field")
    log.info("authorization header", authorization=f"Bearer {CANARY}")
    try:
        raise RuntimeError(f"535 login refused for secret {CANARY}")
    except RuntimeError:
        log.exception("exception message")
    logging.getLogger("aiormq.connection").warning("connecting to amqp://mail:%s@host/", CANARY)
    logging.getLogger("asyncpg").error("dsn postgresql://mail:" + "other-secret" + "@db/mail")

    text = output.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert len(lines) == 6
    assert CANARY not in text
    assert "other-secret" not in text
    assert "[REDACTED]" in text


def test_lines_are_structured_json_with_utc_timestamps_and_context(output: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(delivery_id="d-1")
    try:
        structlog.get_logger("test").info("sent", recipient="a@example.com")
    finally:
        structlog.contextvars.clear_contextvars()
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("test").exception("failed")

    first, second = (orjson.loads(line) for line in output.getvalue().splitlines())
    assert first["event"] == "sent"
    assert first["delivery_id"] == "d-1"
    assert first["level"] == "info"
    assert first["timestamp"].endswith("Z")
    assert second["exception"][0]["exc_type"] == "ValueError"


@pytest.mark.parametrize(
    ("key", "secret"),
    [("password", True), ("smtp_password", True), ("jwt_secret", True), ("fernet_keys", True),
     ("access_token", True), ("Authorization", True), ("routing_key", False),
     ("recipient", False), ("delivery_id", False)],
)
def test_keys_that_name_a_secret(key: str, secret: bool) -> None:
    assert names_secret(key) is secret
