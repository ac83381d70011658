"""The private stack from a checkout only root may enter (a 0700 home, `mktemp -d`): user
postgres cannot reach it, so PostgreSQL's data live in a private folder of the temporary
directory, recorded in the stack's folder, and `purge` removes both."""

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest

from tests.support import early

ROOT = Path(__file__).resolve().parents[2]


def stack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "deploy/local/stack.py"), *args],
                          capture_output=True, text=True, timeout=240)


async def answers(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval("SELECT 1")
    finally:
        await connection.close()


def start_private() -> tuple[Path, subprocess.CompletedProcess]:
    parent = Path(tempfile.mkdtemp(prefix="checkout-"))  # mode 0700, root's
    return parent, stack("up", "--dir", str(parent / "s"), "--ports", "free")


def remove(started: tuple[Path, subprocess.CompletedProcess]) -> None:
    parent, _ = started
    stack("purge", "--dir", str(parent / "s"))
    shutil.rmtree(parent, ignore_errors=True)


# Started as the session begins; the module runs last (tests/support/early.py).
EARLY = [("private stack", start_private, remove)]


@pytest.mark.timeout(300)
def test_a_stack_under_a_0700_parent_starts_and_purge_leaves_nothing() -> None:
    parent, up = early.take("private stack", start_private)
    assert parent.stat().st_mode & 0o777 == 0o700
    directory = parent / "s"
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        assert "cannot enter" in up.stdout
        outside = Path((directory / "postgres-home").read_text().strip())
        assert outside.is_dir() and outside.stat().st_mode & 0o777 == 0o700
        assert not str(outside).startswith(str(parent))
        env = dict(line.split("=", 1) for line in (directory / "env").read_text().splitlines()
                   if "=" in line)
        assert asyncio.run(answers(env["MAIL_POSTGRES_DSN"])) == 1
    finally:
        purged = stack("purge", "--dir", str(directory))
        parent_left = directory.exists()
        shutil.rmtree(parent, ignore_errors=True)
    assert purged.returncode == 0, purged.stderr
    assert not parent_left
    assert not outside.exists()
