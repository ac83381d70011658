"""A provider's quota reply pauses the account instead of failing its recipients: at MAIL,
RCPT or the end of DATA, the account stops (`account.paused`, reason `quota`, with
`resumes_at` and the window), resumes by itself, and every mail arrives after it."""

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.dispatcher_fixtures import request_body
from tests.integration.sender_fixtures import sender_on
from tests.support.smtp_servers import smtp_server

GMAIL_QUOTA = ("550 5.4.5 Daily user sending quota exceeded. Learn more at "
               "https://support.google.com/a/answer/166852")


@pytest.fixture
def sender_overrides() -> dict:
    return {"quota_wait_s": 1, "quota_hold_s": 0.5}


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
async def test_a_quota_reply_pauses_the_account_and_every_mail_goes_after(
    start_sender: Any, stage: str,
) -> None:
    async with smtp_server(refusal=(stage, GMAIL_QUOTA), refusals=1) as server:
        stack = await sender_on(start_sender, server)
        recipients = [{"email": f"q{i}@example.com", "name": f"n{i}", "vars": {"plan": "p"}}
                      for i in range(3)]
        body = request_body(account_id=stack.account_id, recipients=recipients)
        await stack.dispatcher.publish_request(body)
        paused = await stack.wait_event(lambda e: e["type"] == "account.paused")
        completed = await stack.completed(body["delivery_id"], timeout=30)

    assert paused["reason"] == "quota"
    assert paused["window"] == "day"
    assert paused["smtp_code"] == 550 and "quota exceeded" in paused["smtp_message"]
    resumes_at = datetime.fromisoformat(paused["resumes_at"])
    assert 0 < (resumes_at - datetime.fromisoformat(paused["occurred_at"])).total_seconds() < 5
    assert resumes_at <= datetime.now(UTC)
    assert (completed["sent"], completed["failed"]) == (3, 0)
    assert not stack.of_type("mail.failed") and not stack.of_type("mail.deferred")
    assert len(stack.of_type("account.resumed")) == 1
    assert sorted(m.rcpt_tos[0] for m in server.messages) == [r["email"] for r in recipients]


async def test_a_full_quota_window_pauses_the_account_until_it_frees_across_replicas(
    start_sender: Any,
) -> None:
    """Counted in PostgreSQL: three sends of a minute ago (another replica's, before a
    restart) fill a quota of 3 a minute; both replicas hold it; the account pauses until the
    oldest of them leaves the window, then each mail goes as a slot frees."""
    async with smtp_server() as server:
        first = await sender_on(start_sender, server, quota_per_minute=3)
        await start_sender()  # a second replica
        pool = first.dispatcher.pool
        await pool.execute(
            "INSERT INTO account_sends (account_id, at) SELECT $1, clock_timestamp() - "
            "make_interval(secs => s) FROM unnest(ARRAY[57.0, 58.0, 59.0]) AS s",
            first.account_id)
        recipients = [{"email": f"w{i}@example.com", "name": f"n{i}", "vars": {"plan": "p"}}
                      for i in range(3)]
        body = request_body(account_id=first.account_id, recipients=recipients)
        await first.dispatcher.publish_request(body)
        paused = await first.wait_event(lambda e: e["type"] == "account.paused")
        completed = await first.completed(body["delivery_id"], timeout=30)

    assert (paused["reason"], paused["window"], paused["smtp_code"]) == ("quota", "minute", None)
    assert paused["smtp_message"] == "quota_per_minute of 3 messages reached"
    assert completed["sent"] == 3 and not first.of_type("mail.failed")
    # Never more than 3 accepted in any 60 s, the earlier sends included.
    sends = [row["at"] for row in await pool.fetch(
        "SELECT at FROM account_sends WHERE account_id = $1 ORDER BY at", first.account_id)]
    assert len(sends) == 6
    assert all((sends[i + 3] - sends[i]).total_seconds() >= 60 for i in range(len(sends) - 3))
    assert len(server.messages) == 3


async def test_a_slot_that_frees_soon_is_waited_out_without_a_pause(
    start_sender: Any, sender_overrides: dict,
) -> None:
    sender_overrides["quota_hold_s"] = 30
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server, quota_per_minute=2)
        await stack.dispatcher.pool.execute(
            "INSERT INTO account_sends (account_id, at) SELECT $1, clock_timestamp() - "
            "make_interval(secs => s) FROM unnest(ARRAY[58.0, 59.0]) AS s", stack.account_id)
        recipients = [{"email": f"h{i}@example.com", "name": f"n{i}", "vars": {"plan": "p"}}
                      for i in range(2)]
        body = request_body(account_id=stack.account_id, recipients=recipients)
        await stack.dispatcher.publish_request(body)
        completed = await stack.completed(body["delivery_id"], timeout=30)
    assert completed["sent"] == 2
    assert not stack.of_type("account.paused")
    assert len(server.messages) == 2


async def test_greylisting_of_one_recipient_does_not_slow_the_others(start_sender: Any) -> None:
    greylisted = "451 4.7.1 <g0@example.com>: Greylisted, please try again in 300 seconds"
    async with smtp_server(refusal=("rcpt", greylisted), refusals=1) as server:
        stack = await sender_on(start_sender, server)
        recipients = [{"email": f"g{i}@example.com", "name": f"n{i}", "vars": {"plan": "p"}}
                      for i in range(5)]
        body = request_body(account_id=stack.account_id, recipients=recipients)
        await stack.dispatcher.publish_request(body)
        completed = await stack.completed(body["delivery_id"], timeout=30)

    assert completed["sent"] == 5
    [deferred] = stack.of_type("mail.deferred")
    assert deferred["recipient"] == "g0@example.com"
    assert not stack.of_type("account.throttled")  # the account kept its pace
