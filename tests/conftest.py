import os
import uuid

import pytest

from tests.support import early


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


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what they leave out
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules with servers of their own to start (`EARLY`) go last, their servers
    started now in the background (tests/support/early.py)."""
    late = [item for item in items if getattr(getattr(item, "module", None), "EARLY", None)]
    if not late or config.option.collectonly:
        return
    late_ids = {id(item) for item in late}
    items[:] = [item for item in items if id(item) not in late_ids] + late
    jobs = []
    for module in dict.fromkeys(item.module for item in late):  # type: ignore[attr-defined]
        jobs += module.EARLY
    early.begin(jobs)


def pytest_sessionfinish() -> None:
    early.finish()
