"""Consumers lost (a connection, a channel, a failed subscription) subscribed again from the
accounts table, backing off while the broker is away."""

import asyncio
from typing import Any

import structlog

log = structlog.get_logger(__name__)

FIRST_RECOVERY_S = 0.2
MAX_RECOVERY_S = 30.0


async def recover(supervisor: Any) -> None:
    delay = FIRST_RECOVERY_S
    while not supervisor.stopping:
        await asyncio.sleep(delay)
        try:
            await supervisor.reconcile()
            if supervisor.consuming_all:
                log.info("consumers recovered", consumers=supervisor.consumer_count())
                return
        except Exception as error:
            log.warning("recovering the consumers failed; retrying", error=str(error),
                        retry_in_s=delay)
        delay = min(delay * 2, MAX_RECOVERY_S)
