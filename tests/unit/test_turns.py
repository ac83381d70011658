"""The gate of an account's turns: one job at a time, at the end of the pause, urgent first,
a normal job passed over long enough next, and waiters given back on a cancel."""

import asyncio
import time

import pytest

from services.sender.delivery.turns import Interrupted, Turns


async def _take(turns: Turns, urgent: bool, order: list[str], name: str,
                hold_s: float = 0.0) -> None:
    async with turns.turn(urgent):
        order.append(name)
        await asyncio.sleep(hold_s)


async def test_an_urgent_job_arriving_during_the_pause_goes_before_a_normal_one_waiting() -> None:
    pause_end = time.monotonic() + 0.2
    turns = Turns(lambda: pause_end)
    order: list[str] = []
    normal = asyncio.create_task(_take(turns, False, order, "normal"))
    await asyncio.sleep(0.05)
    urgent = asyncio.create_task(_take(turns, True, order, "urgent"))
    await asyncio.gather(normal, urgent)
    assert order == ["urgent", "normal"]
    assert time.monotonic() >= pause_end


async def test_one_job_at_a_time() -> None:
    turns = Turns(lambda: 0.0)
    inside = 0
    most = 0

    async def job() -> None:
        nonlocal inside, most
        async with turns.turn(False):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(job() for _ in range(5)), *(
        asyncio.create_task(_take(turns, True, [], "u")) for _ in range(3)))
    assert most == 1


async def test_a_normal_job_passed_over_long_enough_goes_next() -> None:
    turns = Turns(lambda: 0.0, promote_after_s=0.1)
    order: list[str] = []
    first = asyncio.create_task(_take(turns, True, order, "u0", hold_s=0.15))
    await asyncio.sleep(0.01)
    normal = asyncio.create_task(_take(turns, False, order, "normal"))
    await asyncio.sleep(0.01)
    urgent = asyncio.create_task(_take(turns, True, order, "u1"))
    await asyncio.gather(first, normal, urgent)
    assert order == ["u0", "normal", "u1"]


async def test_a_cancelled_waiter_passes_the_turn_on_and_interrupt_gives_back_the_rest() -> None:
    turns = Turns(lambda: 0.0)
    order: list[str] = []
    holder = asyncio.create_task(_take(turns, False, order, "holder", hold_s=0.1))
    await asyncio.sleep(0.01)
    cancelled = asyncio.create_task(_take(turns, True, order, "cancelled"))
    waiting = asyncio.create_task(_take(turns, False, order, "waiting"))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.sleep(0.01)
    given_back = asyncio.create_task(_take(turns, False, order, "given back"))
    await asyncio.sleep(0.01)
    turns.interrupt()
    with pytest.raises(Interrupted):
        await given_back
    with pytest.raises(Interrupted):
        await waiting
    await holder
    after = asyncio.create_task(_take(turns, True, order, "after"))
    await asyncio.wait_for(after, 1)
    assert order == ["holder", "after"]
