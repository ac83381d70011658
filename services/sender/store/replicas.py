"""The sender replicas alive now (`sender_replicas`): each writes its heartbeat, and reads who
else is there to share the accounts out by rendezvous hashing."""

from datetime import timedelta

import asyncpg


async def heartbeat(db: asyncpg.Pool, replica_id: str) -> None:
    await db.execute(
        "INSERT INTO sender_replicas (replica_id) VALUES ($1) ON CONFLICT (replica_id) "
        "DO UPDATE SET seen_at = now()", replica_id)


async def live_replicas(db: asyncpg.Pool, seen_within: timedelta) -> list[str]:
    rows = await db.fetch(
        "SELECT replica_id FROM sender_replicas WHERE seen_at > now() - $1::interval",
        seen_within)
    return [row["replica_id"] for row in rows]


async def leave(db: asyncpg.Pool, replica_id: str) -> None:
    """A replica shutting down: the others need not wait for its heartbeat to age."""
    await db.execute("DELETE FROM sender_replicas WHERE replica_id = $1", replica_id)
