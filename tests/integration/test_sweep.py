"""The sweep: recipients of a deleted account whose jobs can no longer exist are settled as
failed, with their events and the delivery's completion, once, by one sender."""

from datetime import timedelta
from typing import Any

from services.sender.sweep import REASON, sweep_once
from tests.integration.dispatcher_fixtures import request_body
from tests.integration.sender_fixtures import SenderStack


async def sweep_earlier_tests(stack: SenderStack) -> None:
    """Other tests leave deleted accounts with waiting recipients: settled first. Their
    events are dropped: left in the shared outbox (thousands of them in the whole suite),
    the next test's relay would still be publishing them when its sender stops."""
    pool = stack.dispatcher.pool
    before = await pool.fetchval("SELECT coalesce(max(id), 0) FROM sender_outbox")
    while await sweep_once(pool, grace=timedelta(0)) == 500:
        pass
    await pool.execute("DELETE FROM sender_outbox WHERE id > $1", before)


async def accepted(stack: SenderStack, delivery_id: str) -> None:
    """Until the delivery's `delivery.accepted` (another test's events left in the shared
    outbox may come first)."""
    while True:
        event = await stack.dispatcher.next_event()
        if event["type"] == "delivery.accepted" and event["delivery_id"] == delivery_id:
            return


async def outbox_of(stack: SenderStack, delivery_id: str) -> list[dict]:
    rows = await stack.dispatcher.pool.fetch(
        "SELECT body FROM sender_outbox WHERE body->>'delivery_id' = $1 ORDER BY id",
        delivery_id)
    return [row["body"] for row in rows]


async def test_recipients_of_a_deleted_account_are_settled_with_their_events(
    start_sender: Any,
) -> None:
    stack = await start_sender()  # its account points nowhere: nothing is sent
    pool = stack.dispatcher.pool
    await stack.stop()  # the account's jobs stay in its queue, the recipients `queued`
    await sweep_earlier_tests(stack)
    body = request_body(account_id=stack.account_id)
    await stack.dispatcher.publish_request(body)
    await accepted(stack, body["delivery_id"])
    delivery_id = body["delivery_id"]
    await pool.execute("UPDATE delivery_recipients SET state = 'deferred' "
                       "WHERE delivery_id = $1 AND idx = 1", delivery_id)  # one in a retry

    await pool.execute("UPDATE accounts SET deleted_at = now() WHERE id = $1",
                       stack.account_id)
    assert await sweep_once(pool, grace=timedelta(minutes=1)) == 0  # a send may be in hand
    await pool.execute("UPDATE accounts SET deleted_at = now() - interval '2 minutes' "
                       "WHERE id = $1", stack.account_id)
    assert await sweep_once(pool, grace=timedelta(minutes=1)) == 2
    assert await sweep_once(pool, grace=timedelta(minutes=1)) == 0  # once

    states = await pool.fetch("SELECT state, last_smtp_message FROM delivery_recipients "
                              "WHERE delivery_id = $1 ORDER BY idx", delivery_id)
    assert [(r["state"], r["last_smtp_message"]) for r in states] == [("failed", REASON)] * 2
    events = await outbox_of(stack, delivery_id)
    assert [e["type"] for e in events] == ["mail.failed", "mail.failed", "delivery.completed"]
    assert {e["recipient"] for e in events[:2]} == {"a@example.com", "b@example.com"}
    assert all(e["permanent"] and e["smtp_code"] is None for e in events[:2])
    assert (events[2]["sent"], events[2]["failed"], events[2]["total"]) == (0, 2, 2)


async def test_the_sweep_leaves_live_accounts_alone(start_sender: Any) -> None:
    stack = await start_sender()
    await stack.stop()
    await sweep_earlier_tests(stack)
    body = request_body(account_id=stack.account_id)
    await stack.dispatcher.publish_request(body)
    await accepted(stack, body["delivery_id"])
    assert await sweep_once(stack.dispatcher.pool, grace=timedelta(0)) == 0
    assert await outbox_of(stack, body["delivery_id"]) == []
