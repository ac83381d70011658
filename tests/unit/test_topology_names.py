import pytest

from shared.topology import Topology, delay_label


@pytest.mark.parametrize(
    ("seconds", "label"), [(30, "30s"), (90, "90s"), (120, "2m"), (600, "10m"), (3600, "1h")]
)
def test_retry_delays_have_readable_names(seconds: int, label: str) -> None:
    assert delay_label(seconds) == label


def test_default_names_follow_the_contract() -> None:
    topology = Topology()
    assert topology.requests_exchange == "mail.requests"
    assert topology.events_exchange == "mail.events"
    assert topology.requests_queue == "mail.dispatcher.requests"
    assert topology.dead_queue == "mail.dead"
    assert topology.account_queue("8c0f") == "mail.send.8c0f"
    assert [topology.retry_name(d) for d in topology.retry_delays_s] == [
        "mail.retry.30s", "mail.retry.2m", "mail.retry.10m", "mail.retry.1h"]
