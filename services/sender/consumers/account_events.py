"""Account events followed within a second: a change of the account's settings taken at its
next send, a pause its change or an operator's resume ends, and the account's consumer
reconciled (a periodic reconcile catches an event missed)."""

from typing import Any

import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage

from services.sender import store

log = structlog.get_logger(__name__)

# Pauses that a change of the account ends (an operator's resume ends any). A connection
# pause also ends by itself once a probe succeeds; a changed host should not wait for it.
SETTINGS_FAULTS = frozenset({"auth", "tls", "sender_refused", "pop", "account", "secret",
                             "connect"})


class AccountEvents:
    def __init__(self, supervisor: Any) -> None:
        self._supervisor = supervisor
        self._pool = supervisor.pool

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = orjson.loads(message.body)
            account_id = str(event["account_id"])
            kind = event["type"]
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable account event ignored")
            return
        try:
            await self.follow(kind, account_id)
        except Exception:
            log.exception("following an account event failed; the reconcile will catch up",
                          account_id=account_id)

    async def follow(self, kind: str, account_id: str) -> None:
        account = await store.account(self._pool, account_id)
        worker = self._supervisor.workers.get(account_id)
        if account is not None and kind in ("account.updated", "account.resumed"):
            reason = account["paused_reason"]
            ends_pause = (kind == "account.resumed" and reason is not None) or (
                kind == "account.updated" and reason in SETTINGS_FAULTS)
            if ends_pause:
                if worker is None:
                    worker = await self._supervisor.worker_for(account)
                await worker.resume(announce=kind != "account.resumed")
                self._supervisor.timers.stop(account_id)
                account = await store.account(self._pool, account_id)
            if worker is not None and account is not None:
                async with worker.busy:
                    await worker.update(account)
        await self._supervisor.reconcile(only=account_id)
