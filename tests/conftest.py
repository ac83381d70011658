import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def required_env(name: str) -> str:
    """Integration tests fail, never skip, when the stack is not there (`make test` starts it)."""
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the tests with `make test`, which starts the servers")
    return value


@pytest.fixture
def unique() -> str:
    """A short name no other test uses, for queues, exchanges, tables and services."""
    return "t" + uuid.uuid4().hex[:12]


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 20,
                     interval: float = 0.02) -> T:
    """Polls an async `check` until it returns something truthy; fails after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
