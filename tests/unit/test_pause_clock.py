import time

from services.sender.delivery.pacer import sleep_until


async def test_sleep_until_never_returns_before_its_deadline() -> None:
    for delay in [0.0004, 0.0011, 0.0019, 0.0052, 0.0107] * 10:
        deadline = time.monotonic() + delay
        await sleep_until(deadline)
        assert time.monotonic() >= deadline
