"""The rate learner against a simulated provider that allows N messages in any W seconds
(a sliding window, as providers count), on simulated time: the delivery ends close to the
fastest the window allows, with few refusals after the first window."""

import pytest

from services.sender.delivery.throttle import RateLearner


def deliver(limit: int, window_s: float, total: int, send_s: float = 0.01,
            retry_after_s: float | None = None) -> tuple[float, list[float], RateLearner]:
    """Sends `total` mails one after another; a refused one is tried again. Returns the time
    it took, the times of the refusals and the learner."""
    accepted: list[float] = []
    refusals: list[float] = []
    learner = RateLearner()
    now = not_before = 0.0
    while len(accepted) < total:
        now = max(now, not_before)
        if sum(1 for at in accepted if at > now - window_s) < limit:
            accepted.append(now)
            learner.succeeded(now)
            now += send_s
            not_before = learner.next_allowed(now)
        else:
            refusals.append(now)
            now += send_s
            not_before = now + learner.refused(now, retry_after_s)
    return now, refusals, learner


@pytest.mark.parametrize(("limit", "window_s", "total"), [
    (5, 10, 25), (10, 5, 100), (3, 2, 60), (30, 60, 300), (2, 1, 40)])
def test_the_pace_settles_on_the_providers_window(limit, window_s, total) -> None:
    took, refusals, learner = deliver(limit, window_s, total)
    floor = (total - 1) // limit * window_s  # bursts of `limit`, one window apart
    assert took <= 1.25 * floor
    assert learner.limit == limit
    assert window_s <= learner.window_s <= 1.05 * window_s
    # After the first few windows (learning), at most one refusal per window.
    later = [at for at in refusals if at > 3 * window_s]
    windows = (took - 3 * window_s) / window_s
    assert len(later) <= max(1, windows)


def test_a_named_wait_is_taken_as_told() -> None:
    learner = RateLearner()
    learner.succeeded(0.0)
    assert learner.refused(0.1, retry_after_s=30) == 30


def test_a_provider_whose_limit_drops_is_learnt_anew() -> None:
    learner = RateLearner()
    for at in (0.0, 0.01, 0.02, 0.03):
        learner.succeeded(at)
    learner.refused(0.04)
    learner.succeeded(10.0)
    assert learner.limit == 4
    learner.refused(10.1)
    learner.refused(12.0)  # twice in a row at the learnt rate
    assert not learner.learnt
