"""The outcome table: what a failed send does next, from the verdict, the attempt and the age."""

from datetime import timedelta

import pytest

from services.sender.delivery.classify import Kind, Verdict
from services.sender.delivery.outcome import Defer, PauseAccount, Settle, after_failure

TIERS = (30, 120, 600, 3600)
DAY = timedelta(days=1)


def decide(verdict: Verdict, *, attempt: int = 1, age: timedelta = timedelta(minutes=1),
           retry_unknown: bool = False):
    return after_failure(verdict, "the server's words", attempt=attempt, age=age, max_age=DAY,
                         retry_unknown=retry_unknown, tiers=TIERS)


def test_an_account_fault_pauses_the_account_and_fails_nobody() -> None:
    assert decide(Verdict(Kind.ACCOUNT_FAULT, "auth", pause_reason="auth")) == \
        PauseAccount("auth")
    assert decide(Verdict(Kind.ACCOUNT_FAULT, "connect")) == PauseAccount("account")


def test_a_permanent_refusal_fails_the_recipient_for_good() -> None:
    action = decide(Verdict(Kind.PERMANENT, "recipient"), attempt=3)
    assert action == Settle("failed", "recipient", "the server's words", permanent=True)


def test_no_answer_after_the_data_is_unknown_unless_retries_are_allowed() -> None:
    action = decide(Verdict(Kind.UNKNOWN, "data"))
    assert isinstance(action, Settle)
    assert (action.state, action.permanent) == ("unknown", False)
    assert "may have been delivered" in action.text
    assert decide(Verdict(Kind.UNKNOWN, "data"), retry_unknown=True) == Defer(30)


@pytest.mark.parametrize(("attempt", "delay"), [(1, 30), (2, 120), (3, 600), (4, 3600),
                                                (9, 3600)])
def test_a_transient_failure_waits_longer_each_time(attempt: int, delay: int) -> None:
    assert decide(Verdict(Kind.TRANSIENT, "recipient"), attempt=attempt) == Defer(delay)


def test_a_connection_failure_is_deferred_and_counts_towards_a_pause() -> None:
    action = decide(Verdict(Kind.TRANSIENT, "connect", pause_reason="connect"))
    assert action == Defer(30, connect_failure=True)


def test_throttling_defers_slows_and_takes_the_first_tier_that_waits_as_asked() -> None:
    assert decide(Verdict(Kind.THROTTLED, "data", retry_after_s=45)) == \
        Defer(120, throttled=True)
    assert decide(Verdict(Kind.THROTTLED, "data", retry_after_s=86400)) == \
        Defer(3600, throttled=True)
    assert decide(Verdict(Kind.THROTTLED, "data")) == Defer(30, throttled=True)


def test_a_job_failing_for_longer_than_the_limit_fails_without_being_permanent() -> None:
    action = decide(Verdict(Kind.THROTTLED, "data"), age=DAY + timedelta(seconds=1))
    assert isinstance(action, Settle)
    assert (action.state, action.permanent, action.throttled) == ("failed", False, True)
    assert action.text.startswith("still failing after 1 day")
    assert decide(Verdict(Kind.TRANSIENT, "rcpt"), age=DAY) == Defer(30)
