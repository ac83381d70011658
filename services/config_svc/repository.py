"""The `accounts` table and the event outbox, over asyncpg. Callers own the transactions."""

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from shared.messages import AccountPublic, Event

# Columns a caller may write; the rest are set by the database or by dedicated statements.
WRITABLE = (
    "name", "personal", "owner", "from_address", "from_name", "reply_to", "smtp_host",
    "smtp_port", "smtp_auth", "smtp_username", "smtp_password_enc", "pop_before_smtp",
    "pop_host", "pop_port", "pop_username", "pop_password_enc", "tls", "local_hostname",
    "send_interval_ms", "quota_per_minute", "quota_per_hour", "quota_per_day",
    "standby_account_ids", "allowed_from", "bounce_protocol", "bounce_host", "bounce_port",
    "bounce_tls", "bounce_username", "bounce_password_enc", "bounce_address", "bounce_poll_s",
    "is_default",
)
_LIVE = "deleted_at IS NULL"


async def quota_used(db: asyncpg.Pool, account_id: str, windows: Sequence[str]) -> dict[str, int]:
    """Accepted messages per window now, counted from the sender's `account_sends`; empty
    when the sender's migrations have not run yet."""
    spans = {"minute": "1 minute", "hour": "1 hour", "day": "1 day"}
    try:
        row = await db.fetchrow(
            "SELECT " + ", ".join(
                f"count(*) FILTER (WHERE at > now() - interval '{spans[w]}') AS {w}"
                for w in windows)
            + " FROM account_sends WHERE account_id = $1 AND at > now() - interval '1 day'",
            account_id)
    except asyncpg.UndefinedTableError:
        return {}
    return {w: row[w] for w in windows}


def to_public(row: Mapping[str, Any]) -> AccountPublic:
    fields = {name: row[name] for name in AccountPublic.model_fields if name != "id"}
    return AccountPublic(id=str(row["id"]), **fields)


async def insert(db: asyncpg.Connection, values: Mapping[str, Any],
                 created_by: str) -> asyncpg.Record:
    names = [name for name in WRITABLE if name in values]
    placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 2))
    return await db.fetchrow(
        # Column names come from WRITABLE, never from the caller.
        f"INSERT INTO accounts ({', '.join(names)}, created_by) VALUES ({placeholders}) "
        "RETURNING *",
        *(values[name] for name in names), created_by,
    )


async def get(db: asyncpg.Connection | asyncpg.Pool, account_id: str,
              for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await db.fetchrow(
        f"SELECT * FROM accounts WHERE id = $1 AND {_LIVE}{lock}", account_id
    )


async def update(db: asyncpg.Connection, account_id: str, values: Mapping[str, Any],
                 updated_by: str) -> asyncpg.Record:
    names = [name for name in WRITABLE if name in values]
    sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=3))
    sets = f"{sets}, " if sets else ""
    return await db.fetchrow(
        f"UPDATE accounts SET {sets}updated_by = $2, updated_at = now() "
        f"WHERE id = $1 AND {_LIVE} RETURNING *",
        account_id, updated_by, *(values[name] for name in names),
    )


async def clear_default(db: asyncpg.Connection, except_id: str | None,
                        updated_by: str) -> list[asyncpg.Record]:
    """Unsets the previous default account; returns it (to announce the change)."""
    return await db.fetch(
        "UPDATE accounts SET is_default = false, updated_by = $2, updated_at = now() "
        f"WHERE is_default AND {_LIVE} AND id IS DISTINCT FROM $1::uuid RETURNING *",
        except_id, updated_by,
    )


async def set_paused(db: asyncpg.Connection, account_id: str, paused: bool,
                     updated_by: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "UPDATE accounts SET paused = $2, paused_by = CASE WHEN $2 THEN 'operator' END, "
        f"updated_by = $3, updated_at = now() WHERE id = $1 AND {_LIVE} RETURNING *",
        account_id, paused, updated_by,
    )


async def soft_delete(db: asyncpg.Connection, account_id: str,
                      deleted_by: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "UPDATE accounts SET deleted_at = now(), is_default = false, updated_by = $2, "
        f"updated_at = now() WHERE id = $1 AND {_LIVE} RETURNING *",
        account_id, deleted_by,
    )


async def search(
    db: asyncpg.Pool, words: Sequence[str], match_all: bool, viewer: str | None,
    limit: int, offset: int,
) -> tuple[list[asyncpg.Record], int]:
    """Newest first. `viewer` None sees every account; otherwise shared ones and its own."""
    conditions = [_LIVE]
    args: list[Any] = []
    if viewer is not None:
        args.append(viewer)
        conditions.append(f"(NOT personal OR owner = ${len(args)})")
    if words:
        patterns = []
        for word in words:
            args.append("%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                        + "%")
            patterns.append(f"name ILIKE ${len(args)}")
        conditions.append("(" + (" AND " if match_all else " OR ").join(patterns) + ")")
    where = " AND ".join(conditions)
    total = await db.fetchval(f"SELECT count(*) FROM accounts WHERE {where}", *args)
    rows = await db.fetch(
        f"SELECT * FROM accounts WHERE {where} ORDER BY created_at DESC, id "
        f"LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
        *args, limit, offset,
    )
    return rows, total


async def runtime_states(db: asyncpg.Pool, ids: Sequence[str]) -> dict[str, asyncpg.Record]:
    """The sender's view of these accounts (why it paused one, until when, the pace in force
    after throttling), when the sender's table is there (its migrations ran)."""
    if not ids or not await db.fetchval("SELECT to_regclass('account_runtime') IS NOT NULL"):
        return {}
    rows = await db.fetch(
        "SELECT account_id, paused_reason, paused_detail, resumes_at, interval_ms "
        "FROM account_runtime "
        "WHERE account_id = ANY($1::uuid[])", list(ids))
    return {str(row["account_id"]): row for row in rows}


# The encrypted columns, by the field each one holds.
SECRETS = {"smtp_password": "smtp_password_enc", "pop_password": "pop_password_enc",
           "bounce_password": "bounce_password_enc"}


async def all_with_secrets(db: asyncpg.Connection) -> list[asyncpg.Record]:
    columns = list(SECRETS.values())
    return await db.fetch(
        f"SELECT id, {', '.join(columns)} FROM accounts "
        f"WHERE {' OR '.join(f'{c} IS NOT NULL' for c in columns)} FOR UPDATE")


async def set_secrets(db: asyncpg.Connection, account_id: Any,
                      secrets: Mapping[str, str | None]) -> None:
    """`secrets`: encrypted column -> its new value."""
    columns = list(secrets)
    assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
    await db.execute(f"UPDATE accounts SET {assignments} WHERE id = $1",
                     account_id, *secrets.values())


async def add_event(db: asyncpg.Connection, event: Event) -> None:
    """Written in the change's own transaction: the event exists if and only if it commits."""
    await db.execute(
        "INSERT INTO account_outbox (routing_key, event_id, body) VALUES ($1, $2, $3)",
        event.type, event.event_id, event.model_dump(mode="json"),  # type: ignore[attr-defined]
    )
