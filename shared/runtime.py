"""Process life: the first SIGTERM or SIGINT asks for a graceful stop, the second exits now."""

import asyncio
import os
import signal

import structlog
from pydantic import SecretStr

from shared.logging import configure_logging, register_secret
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)


def start_logging(settings: ServiceSettings) -> None:
    """Logging as the settings say, with every secret setting scrubbed from every line."""
    configure_logging(settings.log_level, settings.log_format)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            for part in value.get_secret_value().split(","):  # key lists too
                register_secret(part.strip())


def stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting at once", signal=signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop
