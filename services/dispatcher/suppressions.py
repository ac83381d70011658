"""The suppression list as the operators' command (services/ops) works on it: rows as plain
dicts, and the reasons an address may be suppressed for."""

from typing import Any

import asyncpg

from services.dispatcher import repository

REASONS = repository.SUPPRESSION_REASONS


async def listed(pool: asyncpg.Pool, q: str | None, limit: int,
                 offset: int) -> tuple[list[dict[str, Any]], int]:
    """Newest first, `q` a part of the address; and how many match in all."""
    rows, total = await repository.list_suppressions(pool, q, limit, offset)
    return [dict(row) for row in rows], total


async def add(pool: asyncpg.Pool, email: str, reason: str, source: str,
              detail: str | None) -> dict[str, Any]:
    """An address already on the list is kept as it was; returns its row."""
    return dict(await repository.suppress(pool, email, reason, source, detail))


async def remove(pool: asyncpg.Pool, email: str) -> bool:
    """False when the address was not on the list."""
    return await repository.unsuppress(pool, email)
