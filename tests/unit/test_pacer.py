"""The pacer on a fake clock and a fake lease: the pause from the end of the last transaction,
never shorter; the lease taken when not held, kept between sends, renewed during a long send,
released only when it is the worker's own."""

import asyncio

from services.sender.delivery.pacer import LEASE_MARGIN_S, Pacer
from tests.support.fakes import FakeClock, FakeLease


def pacer(clock: FakeClock, lease: FakeLease, owner: str = "r1/a", interval_ms: int = 200,
          ttl_s: float = 10.0) -> Pacer:
    paced = Pacer(lease, owner, ttl_s=ttl_s, clock=clock)
    paced.interval_ms = interval_ms
    return paced


async def test_the_first_turn_takes_the_lease_and_waits_out_the_stored_pause() -> None:
    clock = FakeClock()
    lease = FakeLease(clock)
    lease.last_end = clock.t - 0.05  # another worker's send ended 50 ms ago
    paced = pacer(clock, lease)
    await paced.turn()
    assert lease.owner == "r1/a"
    assert abs(clock.t - (lease.last_end + 0.2)) < 1e-9


async def test_the_pause_runs_from_the_end_of_the_transaction_and_a_kept_lease_needs_no_trip() \
        -> None:
    clock = FakeClock()
    lease = FakeLease(clock)
    paced = pacer(clock, lease)
    await paced.turn()
    clock.t += 0.03  # the transaction
    paced.ended()
    end = clock.t
    paced.kept(clock.t, 5.2)  # the record kept the lease for the pause plus the hold
    clock.t += 0.01  # the record's round trip is not part of the pause
    await paced.turn()
    assert lease.takes == 1
    assert abs(clock.t - (end + 0.2)) < 1e-9


async def test_a_lease_given_back_by_the_record_is_taken_again() -> None:
    clock = FakeClock()
    lease = FakeLease(clock)
    paced = pacer(clock, lease)
    await paced.turn()
    paced.ended()
    paced.kept(clock.t, None)
    lease.owner = None
    await paced.turn()
    assert lease.takes == 2


async def test_another_workers_lease_is_waited_for_even_in_the_same_replica() -> None:
    clock = FakeClock()
    lease = FakeLease(clock)
    lease.owner, lease.until = "r1/b", clock.t + 3  # a second worker of the same replica
    paced = pacer(clock, lease, owner="r1/a")
    await paced.turn()
    assert lease.owner == "r1/a"
    assert clock.t >= 1003.0
    assert lease.takes > 1


async def test_a_short_lease_left_is_not_trusted_and_is_taken_again() -> None:
    clock = FakeClock()
    lease = FakeLease(clock)
    paced = pacer(clock, lease)
    await paced.turn()
    paced.ended()
    paced.kept(clock.t, LEASE_MARGIN_S / 2)
    await paced.turn()
    assert lease.takes == 2


async def test_release_gives_back_only_a_lease_still_held() -> None:
    clock = FakeClock()
    lease = FakeLease(clock)
    paced = pacer(clock, lease)
    await paced.release()
    assert lease.released == []
    await paced.turn()
    await paced.release()
    assert lease.released == ["r1/a"]
    assert not paced.holds_lease


async def test_a_send_outlasting_the_lease_renews_it_again_and_again() -> None:
    clock = FakeClock()
    lease = FakeLease(clock)
    paced = pacer(clock, lease, ttl_s=3.0)
    await paced.turn()
    start = clock.t
    with paced.guard():
        while clock.t < start + 10:  # noqa: ASYNC110 - a send of 10 s on a 3 s lease (fake time)
            await asyncio.sleep(0)
    assert paced.holds_lease
    assert lease.owner == "r1/a" and lease.until > clock.t


async def test_a_lease_lost_during_a_send_is_not_trusted_for_the_next() -> None:
    clock = FakeClock()
    lease = FakeLease(clock)
    paced = pacer(clock, lease, ttl_s=LEASE_MARGIN_S)
    await paced.turn()
    lease.owner = "r2/x"  # taken over after it ran out
    with paced.guard():
        for _ in range(20):
            await asyncio.sleep(0)
    assert not paced.holds_lease
