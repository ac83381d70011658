"""Waiting on a condition, never on the clock: poll until it holds, with a timeout."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


async def until(check: Callable[[], Awaitable[T]], timeout: float = 20,
                interval: float = 0.02) -> T | None:
    """Polls an async `check` until it returns something truthy (returned); None once
    `timeout` has passed (for a caller that reports the miss itself, as the fault suite's
    rows count what never settled)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            return None
        await asyncio.sleep(interval)


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 20,
                     interval: float = 0.02) -> T:
    """Polls an async `check` until it returns something truthy; fails after `timeout`."""
    result = await until(check, timeout, interval)
    if not result:
        pytest.fail(f"condition not met within {timeout} s")
    return result

