"""The rate a throttling provider allows, learnt from its refusals: N messages in W seconds.

Providers limit by windows ("5 in any 10 s", "30 a minute"), not by a fixed pause. A run of
sends that ends in a refusal gives N (its length) and its start; the first send the provider
takes again after the refusal is later than the moment that run's first send left the window,
and the last refused try earlier, so W lies between the two. The account then sends in
bursts of N, each one W after the previous one's start (the fastest the window allows), with
W first at the safe bound, then halving the interval between the bounds at every burst: a
burst taken whole proves W no longer than the one tried, a refusal proves it longer. So the
pace settles within a few windows, with at most one refusal per window after the first.

Before anything is learnt, a refusal waits before the next try: the wait the server named,
else a quarter of the time since the refused run began (at least a second). Pure: the caller
passes the time (monotonic seconds).
"""

from collections import deque
from dataclasses import dataclass, field

FIRST_WAIT_S = 1.0
MAX_WAIT_S = 600.0
PROBE_STEP = 0.25
CLOSE_ENOUGH = 0.02  # the bounds on W this close (relative): stop probing


@dataclass
class RateLearner:
    limit: int | None = None  # N, once learnt
    window_s: float | None = None  # the W in force, once learnt
    _low: float = 0.0  # W is longer than this (a refusal proved it)
    _high: float = 0.0  # W is at most this (a burst taken whole proved it)
    _run_start: float | None = None  # first send of the current run of successes
    _run_count: int = 0
    _refused_run: tuple[float, int] | None = None  # the run a refusal ended: start, length
    _last_refusal: float | None = None
    _sends: deque = field(default_factory=deque)  # the last N accepted sends
    _refusals_in_a_row: int = 0

    @property
    def learnt(self) -> bool:
        return self.limit is not None and self.window_s is not None

    @property
    def pace_ms(self) -> int | None:
        """The average pace the provider allows (W / N), once learnt."""
        if self.limit is None or self.window_s is None:
            return None
        return round(self.window_s * 1000 / self.limit)

    def refused(self, now: float, retry_after_s: float | None = None) -> float:
        """A refusal for rate at `now`; returns how long to wait before the next try."""
        self._refusals_in_a_row += 1
        if self.learnt and self._refusals_in_a_row > 1:
            # Refused twice in a row at the learnt rate: the limit is not what was learnt
            # (or it changed); learn it anew.
            self.limit = self.window_s = None
            self._sends.clear()
        if not self.learnt and self._run_count and self._refused_run is None:
            self._refused_run = (self._run_start or now, self._run_count)
        self._run_start, self._run_count = None, 0
        self._last_refusal = now
        if self.limit is not None and self.window_s is not None:
            # The W tried was too short: back to the safe bound.
            self._low = max(self._low, self.window_s)
            self.window_s = max(self._high, self._low * (1 + CLOSE_ENOUGH))
            self._high = self.window_s
            return retry_after_s or max(self.window_s / self.limit,
                                        self.next_allowed(now) - now)
        if retry_after_s:
            return retry_after_s
        # Tries a quarter of the time since the refused run began apart: W is then known to
        # a quarter at the first success, few refusals for a long window.
        started = self._refused_run[0] if self._refused_run else now
        return min(max(FIRST_WAIT_S, PROBE_STEP * (now - started)), MAX_WAIT_S)

    def succeeded(self, now: float) -> None:
        """The provider took a message at `now`."""
        self._refusals_in_a_row = 0
        if self._run_count == 0:
            self._run_start = now
            if self._refused_run is not None:
                # The refused run's first send had left the provider's window by now, and
                # had not at the last refused try.
                start, count = self._refused_run
                self.limit = count
                self._high = max(now - start, 0.001)
                self._low = 0.0 if self._last_refusal is None else self._last_refusal - start
                self.window_s = self._high
                self._refused_run = None
                self._sends.clear()
        self._run_count += 1
        self._sends.append(now)
        if self.limit is None or self.window_s is None:
            return
        while len(self._sends) > self.limit:
            self._sends.popleft()
        if self._run_count % self.limit == 0 and self._run_count > self.limit:
            # A whole burst taken W after the previous one: W is at most the one tried.
            self._high = min(self._high, self.window_s)
            if self._high - self._low > CLOSE_ENOUGH * self._high:
                self.window_s = (self._low + self._high) / 2

    def next_allowed(self, now: float) -> float:
        """The earliest the next send keeps within the learnt window (now, when not learnt)."""
        if self.limit is None or self.window_s is None or len(self._sends) < self.limit:
            return now
        return max(now, self._sends[-self.limit] + self.window_s)
