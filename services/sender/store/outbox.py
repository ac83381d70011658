"""The sender's outbox (`sender_outbox`): every event it emits is written here, in the
transaction of the change it announces, and published by the relay."""

from typing import Any

import asyncpg


async def add_event(db: asyncpg.Connection, event: dict[str, Any]) -> None:
    """Into the outbox, in the caller's transaction: the event exists if and only if it
    commits."""
    await db.execute(
        "INSERT INTO sender_outbox (routing_key, event_id, body) VALUES ($1, $2, $3)",
        event["type"], event["event_id"], event)
