import os
import uuid

import pytest


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
