"""What a send's answer leaves in the ledger: the recipient settled, deferred or already done,
or the account paused, each with its event in the outbox beside it (one transaction)."""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from services.sender import metrics
from services.sender.delivery import events
from services.sender.delivery.classify import Verdict
from services.sender.delivery.context import InTurn
from services.sender.delivery.disposition import Ack, Disposition, ToDead, ToQueue, ToRetry
from services.sender.delivery.outcome import Defer, PauseAccount, Settle, after_failure
from services.sender.delivery.text import clean_text
from shared.smtp import SmtpStageError

log = structlog.get_logger(__name__)

QUOTA_WINDOWS_S = {"minute": 60, "hour": 3600, "day": 86400}


class Outcomes:
    def __init__(self, worker: Any, parts: Any) -> None:
        self._w = worker  # the account: its pacer, its pause, whether it still consumes
        self._parts = parts
        self.connect_failures = 0
        self.quota_replies = 0  # in a row: each doubles the wait before trying again

    async def failed(self, turn: InTurn, row: Any, metadata: dict, error: SmtpStageError,
                     verdict: Verdict) -> Disposition:
        log.info("smtp failure", stage=error.stage, smtp_code=error.code, kind=verdict.kind,
                 smtp_message=error.text)
        settings = self._parts.settings
        action = after_failure(
            verdict, error.text, attempt=row["attempts"] + 1,
            age=datetime.now(UTC) - turn.job.first_queued_at,
            max_age=timedelta(seconds=settings.retry_max_age_s),
            retry_unknown=settings.retry_unknown, tiers=self._parts.topology.retry_delays_s)
        if isinstance(action, PauseAccount):
            return await self._pause_for(turn, action, error)
        if action.throttled:
            await self._w.pace.slow_down(error, verdict)
        if isinstance(action, Settle):
            await self.settle(turn, metadata, action.state, error.code, action.text, None,
                              touched_server=True, stage=action.stage,
                              permanent=action.permanent)
            return Ack()
        assert isinstance(action, Defer)
        return await self._defer(turn, row, metadata, error, action)

    async def _pause_for(self, turn: InTurn, action: PauseAccount,
                         error: SmtpStageError) -> Disposition:
        # Not one recipient is failed for the account's fault or its provider's quota.
        self._w.pacer.forget()
        await self._w.recorder.release_lease(touched_server=True)
        resumes_at = None
        if action.reason == "quota":
            resumes_at = datetime.now(UTC) + timedelta(seconds=self._quota_wait_s(action))
            self.quota_replies += 1
        await self._w.pause(action.reason, error.code, clean_text(error.text), error.stage,
                            resumes_at=resumes_at, window=action.window)
        return ToQueue(turn.queue_account)

    async def _defer(self, turn: InTurn, row: Any, metadata: dict, error: SmtpStageError,
                     action: Defer) -> Disposition:
        words = clean_text(error.text)
        attempts = row["attempts"] + 1
        event = events.deferred(
            turn.job, turn.account_id, metadata=metadata, code=error.code, text=words,
            attempts=attempts, retry_at=datetime.now(UTC) + timedelta(seconds=action.delay_s),
            requested=turn.requested)
        await self.record(turn, "deferred", error.code, words, None, True, event)
        metrics.OUTCOMES.labels(turn.account_id, "deferred").inc()
        if action.connect_failure:
            self.connect_failures += 1
            if self.connect_failures >= self._parts.settings.connect_failures_to_pause:
                await self._w.pause("connect", error.code, words, error.stage)
        return ToRetry(action.delay_s)

    def _quota_wait_s(self, action: PauseAccount) -> float:
        """The wait the provider named; else a wait that doubles at each quota reply in a
        row, up to the window it named (a day when it named none)."""
        if action.wait_s:
            return action.wait_s
        longest = QUOTA_WINDOWS_S.get(action.window or "day", 86400)
        return min(self._parts.settings.quota_wait_s * 2 ** self.quota_replies, longest)

    async def settle(self, turn: InTurn, metadata: dict, state: str, code: int | None,
                     text: str, message_id: str | None, *, touched_server: bool,
                     stage: str = "data", permanent: bool = True) -> None:
        text = clean_text(text)
        if state == "sent":
            event = events.sent(turn.job, turn.account_id, metadata=metadata,
                                message_id=message_id, code=code, requested=turn.requested)
        else:
            event = events.failed(turn.job, turn.account_id, metadata=metadata, state=state,
                                  stage=stage, code=code, text=text, permanent=permanent,
                                  requested=turn.requested)
        await self.record(turn, state, code, text, message_id, touched_server, event)
        metrics.OUTCOMES.labels(turn.account_id, state).inc()
        if touched_server:
            metrics.LAST_SEND.labels(turn.account_id).set_to_current_time()
        log.info("recipient settled", outcome=state, smtp_code=code)

    async def record(self, turn: InTurn, state: str, code: int | None, text: str,
                     message_id: str | None, touched_server: bool,
                     event: dict[str, Any]) -> None:
        worker = self._w
        # The lease is kept only while this worker still consumes: after a cancel or a pause
        # another worker may have the queue, and should not wait for it.
        keep = touched_server and worker.consuming and not worker.paused
        hold = timedelta(milliseconds=worker.interval_ms,
                         seconds=self._parts.settings.lease_hold_s) if keep else None
        asked = time.monotonic()
        recorded = await worker.recorder.record(
            delivery_id=turn.job.delivery_id, index=turn.job.index, state=state, code=code,
            text=text, message_id=message_id, touched_server=touched_server, hold=hold,
            event=event, completed_id=events.completed_id(turn.job.delivery_id))
        if touched_server:
            kept = recorded.lease_kept and hold is not None
            worker.pacer.kept(asked, hold.total_seconds() if kept and hold else None)

    async def already_done(self, turn: InTurn, row: Any) -> Disposition:
        """An unknown job goes to the dead letters; a copy of a job already done (a
        redelivery after a crash) is acked with its events again, same ids, and no second
        SMTP transaction."""
        job = turn.job
        if row is None:
            return ToDead("unknown_delivery", f"no recipient row for {job.job_id}")
        state = row["state"]
        if state in ("cancelled", "expired", "scheduled"):
            log.info("job cancelled, expired or held back; not sent", outcome=state)
            return Ack()
        again = []
        if state == "sent":
            again.append(events.sent(
                job, turn.account_id, metadata=row["metadata"], message_id=row["message_id"],
                code=row["last_smtp_code"], attempts=row["attempts"],
                requested=turn.requested))
        if row["completed_at"] is not None:
            again.append(events.completed(job.delivery_id, row))
        if again:
            await self._parts.store.add_events(again)
            self._parts.wake_events()
        log.info("job already settled; not sent again", outcome=state)
        return Ack()
