"""What a failed send does next: the verdict, the attempt and the job's age in, the action out.

Pure: no I/O, no clock. The worker carries the action out (records it, retries the job later,
or pauses the account); `classify` said what the server's reply means.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from services.sender.delivery.classify import Kind, Verdict, retry_delay


@dataclass(frozen=True)
class Settle:
    """Record a final state: `failed` or `unknown` (the mail may have been delivered)."""
    state: str
    stage: str
    text: str
    permanent: bool
    throttled: bool = False  # the provider also asked us to slow down


@dataclass(frozen=True)
class Defer:
    """Record `deferred` and retry the job after `delay_s`."""
    delay_s: int
    throttled: bool = False  # slow the account down too
    connect_failure: bool = False  # counts towards a connection pause


@dataclass(frozen=True)
class PauseAccount:
    """The account is at fault, or its provider's quota is used up: the job goes back to its
    queue untouched, the account stops."""
    reason: str
    wait_s: float | None = None  # quota: the wait the provider named
    window: str | None = None  # quota: the window the provider named


Action = Settle | Defer | PauseAccount


def after_failure(verdict: Verdict, text: str, *, attempt: int, age: timedelta,
                  max_age: timedelta, retry_unknown: bool, tiers: Sequence[int]) -> Action:
    """`attempt`: this try's number (1 for the first); `age`: since the job was first queued."""
    if verdict.kind is Kind.ACCOUNT_FAULT:
        return PauseAccount(verdict.pause_reason or "account")
    if verdict.kind is Kind.QUOTA:
        return PauseAccount("quota", wait_s=verdict.retry_after_s, window=verdict.window)
    if verdict.kind is Kind.PERMANENT:
        return Settle("failed", verdict.event_stage, text, permanent=True)
    if verdict.kind is Kind.UNKNOWN and not retry_unknown:
        return Settle("unknown", "data", f"no answer after the message was sent ({text}): it "
                      "may have been delivered", permanent=False)
    throttled = verdict.kind is Kind.THROTTLED
    if age > max_age:
        return Settle("failed", verdict.event_stage, f"still failing after {age}: {text}",
                      permanent=False, throttled=throttled)
    delay = retry_delay(attempt, tiers)
    if verdict.retry_after_s:  # the server said when: the first tier that waits enough
        delay = next((tier for tier in tiers if tier >= verdict.retry_after_s), tiers[-1])
    return Defer(delay, throttled=throttled, connect_failure=verdict.pause_reason == "connect")
