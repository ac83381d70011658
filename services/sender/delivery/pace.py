"""An account's pace after its provider's answers: slower at once when it refuses for rate
(the wait it named, or what the learner says), back to the configured pace step by step
after successes; the configured interval stays the floor."""

import time
from typing import Any

import structlog

from services.sender import metrics
from services.sender.delivery import events
from services.sender.delivery.classify import Verdict, decayed_interval_ms
from services.sender.delivery.pacer import Pacer
from services.sender.delivery.ports import SendStore
from services.sender.delivery.text import clean_text
from services.sender.delivery.throttle import RateLearner
from shared.smtp import SmtpStageError

log = structlog.get_logger(__name__)


class Pace:
    def __init__(self, db: SendStore, account_id: str, pacer: Pacer,
                 wake_events: Any) -> None:
        self._db = db
        self._account_id = account_id
        self._pacer = pacer
        self._wake_events = wake_events
        self._rate = RateLearner()  # a throttling provider's window, once it refuses
        self._successes = 0
        self.configured_ms = 0  # the account's own send_interval_ms
        self.throttled = False

    async def slow_down(self, error: SmtpStageError, verdict: Verdict) -> None:
        """The provider refused for rate: the next try waits, and the learner takes the
        refusal into its estimate of the provider's window."""
        now = time.monotonic()
        wait_s = self._rate.refused(now, verdict.retry_after_s)
        self._pacer.not_before = now + wait_s
        pace = self._rate.pace_ms
        shown = max(pace if pace is not None else round(wait_s * 1000), self.configured_ms)
        if not self.throttled:
            self.throttled = True
            metrics.THROTTLED.inc()
        log.warning("account throttled by its provider", wait_s=round(wait_s, 3),
                    learnt_limit=self._rate.limit, learnt_window_s=self._rate.window_s)
        stored = pace if pace is not None and pace > self._pacer.interval_ms else None
        try:  # the slower pace holds here at once; storing and announcing it may lag
            await self._db.set_interval(self._account_id, stored, events.throttled(
                self._account_id, code=error.code, text=clean_text(error.text),
                interval_ms=shown))
            self._wake_events()
        except Exception:
            log.exception("storing or announcing the slower pace failed")

    async def succeeded(self, accepted_at: float) -> None:
        # Every success counts: the run a refusal ends tells the provider's limit.
        self._rate.succeeded(accepted_at)
        # The provider's learnt window: the next send waits until it allows one.
        self._pacer.not_before = self._rate.next_allowed(accepted_at)
        configured = self.configured_ms
        if self._pacer.interval_ms <= configured:
            return
        # A pace stored by an earlier throttling (a restart): back to the configured one
        # step by step, as before, while the learner watches the window itself.
        self._successes += 1
        slower = decayed_interval_ms(self._pacer.interval_ms, configured, self._successes)
        if slower == self._pacer.interval_ms:
            return
        self._pacer.interval_ms = slower
        at_pace = slower <= configured
        try:
            await self._db.set_interval(self._account_id, None if at_pace else slower)
        except Exception:
            # The outcome is recorded; the next success writes the pace again.
            log.exception("storing the account's pace failed")
        if at_pace and self.throttled and not self._rate.learnt:
            self.throttled = False
            metrics.THROTTLED.dec()

    def forget(self) -> None:
        """The account is gone: its throttling no longer counts."""
        if self.throttled:
            self.throttled = False
            metrics.THROTTLED.dec()
