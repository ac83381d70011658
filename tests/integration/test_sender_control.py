"""Delivery control at the SMTP server (contract §6): an urgent mail overtakes a queued bulk
delivery, an expired recipient is not sent, a cancel stops a delivery being sent, a paused
delivery waits while the account's others go on."""

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.accounts_fixtures import auth
from tests.integration.dispatcher_fixtures import request_body
from tests.integration.sender_fixtures import SenderStack, sender_on
from tests.integration.test_sender import ledger_states
from tests.support.mail import gaps, recipients
from tests.support.smtp_servers import smtp_server
from tests.support.waiting import eventually


async def queue_empty(stack: SenderStack) -> bool:
    topology = stack.dispatcher.topology
    underlay = await stack.dispatcher.channel.get_underlay_channel()
    waiting = 0
    for name, _key in topology.send_queues(stack.account_id):
        waiting += (await underlay.queue_declare(name, passive=True)).message_count or 0
    return waiting == 0


async def test_an_urgent_mail_overtakes_a_queued_bulk_delivery_and_the_pause_holds(
    start_sender: Any,
) -> None:
    interval_s = 0.3
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server, send_interval_ms=int(interval_s * 1000))
        bulk = request_body(account_id=stack.account_id, recipients=recipients(20, "bulk"))
        await stack.dispatcher.publish_request(bulk)
        await server.wait_until(lambda: len(server.messages) >= 3, timeout=20)

        urgent = request_body(account_id=stack.account_id, priority="high",
                              recipients=[{"email": "reset@example.com", "name": "山田",
                                           "vars": {"plan": "gold"}}])
        published_at = time.monotonic()
        await stack.dispatcher.publish_request(urgent)
        await server.wait_until(
            lambda: any(m.rcpt_tos == ["reset@example.com"] for m in server.messages),
            timeout=10)
        at = next(i for i, m in enumerate(server.messages)
                  if m.rcpt_tos == ["reset@example.com"])
        # Bulk mails begun after the urgent one was published, before it: at most the one
        # whose turn came while the urgent job was still on its way through the dispatcher.
        overtaken = [m for m in server.messages[:at] if m.started_at > published_at]
        assert len(overtaken) <= 1, [m.rcpt_tos for m in overtaken]
        assert len(server.messages) - 1 - at <= 1  # the bulk was far from done
        completed = await stack.completed(urgent["delivery_id"])
        assert (completed["sent"], completed["total"]) == (1, 1)
        await stack.completed(bulk["delivery_id"], timeout=30)
    assert len(server.messages) == 21
    assert min(gaps(server)) >= interval_s  # the account's pause holds for both
    assert await ledger_states(stack, bulk["delivery_id"]) == {"sent": 20}


async def test_a_recipient_not_sent_by_expires_at_is_not_sent_at_all(
    start_sender: Any,
) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server, send_interval_ms=3000)
        expires_at = datetime.now(UTC) + timedelta(seconds=1)
        body = request_body(account_id=stack.account_id, recipients=recipients(3),
                            expires_at=expires_at.isoformat())
        await stack.dispatcher.publish_request(body)
        completed = await stack.completed(body["delivery_id"], timeout=20)
        assert (completed["sent"], completed["failed"], completed["total"]) == (1, 2, 3)
    assert [m.rcpt_tos for m in server.messages] == [["r0@example.com"]]
    failed = stack.of_type("mail.failed")
    assert sorted(e["recipient"] for e in failed) == ["r1@example.com", "r2@example.com"]
    for event in failed:
        assert (event["reason"], event["permanent"], event["stage"], event["smtp_code"]) == (
            "expired", True, None, None)
        assert event["attempts"] == 1
    assert await ledger_states(stack, body["delivery_id"]) == {"sent": 1, "expired": 2}


async def test_a_cancel_during_sending_stops_it_at_once_and_counts_right(
    start_sender: Any,
) -> None:
    total = 30
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server, send_interval_ms=300)
        body = request_body(account_id=stack.account_id, recipients=recipients(total))
        delivery_id = body["delivery_id"]
        await stack.dispatcher.publish_request(body)
        await server.wait_until(lambda: len(server.messages) >= 3, timeout=20)

        asked_at = time.monotonic()
        answer = await stack.dispatcher.canceller.cancel(delivery_id, "tanaka")
        committed_by = time.monotonic()
        assert answer is not None
        assert answer.sent + answer.cancelled == total
        # The cancelled jobs are acked without waiting for the account's pause.
        await eventually(lambda: queue_empty(stack), timeout=5)
        completed = await stack.completed(delivery_id, timeout=10)
        at_server = len(server.messages)

        # Nothing begun after the cancel's commit reached the server; at most the one
        # transaction on the wire at the cancel finished.
        assert all(m.started_at < committed_by for m in server.messages)
        assert len([m for m in server.messages if m.ended_at > asked_at]) <= 1
        cancelled = await stack.wait_event(lambda e: e["type"] == "delivery.cancelled")
        assert (cancelled["sent"], cancelled["cancelled"], cancelled["total"]) == (
            answer.sent, answer.cancelled, total)
        assert completed["sent"] + completed["cancelled"] == total
        assert completed["failed"] == 0

        async def every_mail_recorded() -> bool:
            return (await ledger_states(stack, delivery_id)).get("sent", 0) == at_server

        await eventually(every_mail_recorded, timeout=5)
        states = await ledger_states(stack, delivery_id)
        assert states == {"sent": at_server, "cancelled": total - at_server}
        for message in server.messages:
            await stack.wait_event(lambda e, to=message.rcpt_tos[0]: e["type"] == "mail.sent"
                                   and e["recipient"] == to)
        assert len([e for e in stack.of_type("mail.sent")
                    if e["delivery_id"] == delivery_id]) == at_server


async def test_a_cancel_at_interval_0_withdraws_one_transaction_and_acks_the_rest_unsent(
    start_sender: Any,
) -> None:
    """At interval 0 a job sent at once has its row read only while MAIL and RCPT are on the
    wire: the first job after the cancel is withdrawn there (RSET, nothing sent), and from
    then on each job's row is read on arrival, so the rest are acked without a MAIL."""
    total = 200
    async with smtp_server(data_delay_s=0.02) as server:
        stack = await sender_on(start_sender, server, send_interval_ms=0)
        body = request_body(account_id=stack.account_id, recipients=recipients(total))
        delivery_id = body["delivery_id"]
        await stack.dispatcher.publish_request(body)
        await server.wait_until(lambda: len(server.messages) >= 5, timeout=20)

        answer = await stack.dispatcher.canceller.cancel(delivery_id, "tanaka")
        committed_by = time.monotonic()
        assert answer is not None and answer.cancelled > 0
        await stack.completed(delivery_id, timeout=20)
        await eventually(lambda: queue_empty(stack), timeout=5)

        assert all(m.started_at < committed_by for m in server.messages)
        mails = server._mail_times  # every MAIL the server took, sent or withdrawn
        assert len(mails) - len(server.messages) <= 2, (
            f"{len(mails) - len(server.messages)} transactions withdrawn; the cancelled jobs "
            "should have been acked on arrival")
        states = await ledger_states(stack, delivery_id)
        assert states == {"sent": len(server.messages), "cancelled": total - len(server.messages)}


async def test_a_paused_delivery_waits_while_the_accounts_others_go_on_and_resumes_once(
    start_sender: Any,
) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server, send_interval_ms=100)
        paused = request_body(account_id=stack.account_id, recipients=recipients(20, "a"))
        other = request_body(account_id=stack.account_id, recipients=recipients(5, "b"))
        await stack.dispatcher.publish_request(paused)
        await server.wait_until(lambda: len(server.messages) >= 3, timeout=20)
        async with stack.dispatcher.http() as client:
            answer = await client.post(f"/v1/deliveries/{paused['delivery_id']}/pause",
                                       headers=auth("tanaka", admin=False))
            assert answer.json()["state"] == "paused"
            paused_by = time.monotonic()
            await stack.dispatcher.publish_request(other)
            await stack.completed(other["delivery_id"], timeout=20)
            await eventually(lambda: queue_empty(stack), timeout=5)
            held = await ledger_states(stack, paused["delivery_id"])
            sent_before = held.get("sent", 0)
            assert held == {"sent": sent_before, "scheduled": 20 - sent_before}
            begun_after = [m.rcpt_tos[0] for m in server.messages
                           if m.started_at > paused_by and m.rcpt_tos[0].startswith("a")]
            assert begun_after == []
            status = await client.get(f"/v1/deliveries/{paused['delivery_id']}",
                                      headers=auth())
            assert (status.json()["state"], status.json()["scheduled"]) == (
                "paused", 20 - sent_before)

            answer = await client.post(f"/v1/deliveries/{paused['delivery_id']}/resume",
                                       headers=auth("tanaka", admin=False))
            assert answer.status_code == 200
            completed = await stack.completed(paused["delivery_id"], timeout=30)
        assert (completed["sent"], completed["total"]) == (20, 20)
    mails = [m.rcpt_tos[0] for m in server.messages]
    assert sorted(mails) == sorted([f"a{i}@example.com" for i in range(20)]
                                   + [f"b{i}@example.com" for i in range(5)])
    assert await ledger_states(stack, paused["delivery_id"]) == {"sent": 20}
    assert min(gaps(server)) >= 0.1


async def test_a_delivery_with_a_suppressed_recipient_completes_when_the_rest_is_sent(
    start_sender: Any,
) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server)
        prefix = f"s{uuid.uuid4().hex[:8]}-r"  # this test's own addresses
        await stack.dispatcher.pool.execute(
            "INSERT INTO suppressions (email_key, email, reason, source) "
            "VALUES ($1, $1, 'hard', 'tests')", f"{prefix}1@example.com")
        body = request_body(account_id=stack.account_id,
                            recipients=recipients(3, prefix=prefix))
        await stack.dispatcher.publish_request(body)
        completed = await stack.completed(body["delivery_id"])
    assert (completed["sent"], completed["failed"], completed["suppressed"],
            completed["total"]) == (2, 0, 1, 3)
    assert sorted(m.rcpt_tos[0] for m in server.messages) == [f"{prefix}0@example.com",
                                                              f"{prefix}2@example.com"]
    assert await ledger_states(stack, body["delivery_id"]) == {"sent": 2, "suppressed": 1}


async def test_a_cancel_committed_while_the_connection_opens_withdraws_the_mail(
    start_sender: Any,
) -> None:
    """The job's row is read as its send begins; a connection opened after that (the first
    of a session, or a stale one replaced) gives a cancel time to commit before MAIL: the
    row is read again before DATA, and the mail is withdrawn."""
    cancelled: dict[str, Any] = {}
    stack_box: list[SenderStack] = []
    committed = asyncio.Event()

    async def cancel_first(connection: int) -> None:
        if connection == 1:
            stack = stack_box[0]
            answer = await stack.dispatcher.canceller.cancel(cancelled["id"], "tanaka")
            cancelled["answer"] = answer
            committed.set()

    async with smtp_server(on_ehlo=cancel_first) as server:
        stack = await sender_on(start_sender, server, send_interval_ms=0)
        stack_box.append(stack)
        first = request_body(account_id=stack.account_id, recipients=recipients(1, "first"))
        cancelled["id"] = first["delivery_id"]
        await stack.dispatcher.publish_request(first)
        async with asyncio.timeout(20):
            await committed.wait()
        # Taken after the first job is settled (prefetch 1): it shows the first is done.
        second = request_body(account_id=stack.account_id, recipients=recipients(1, "second"))
        await stack.dispatcher.publish_request(second)
        await stack.completed(second["delivery_id"], timeout=20)

    assert cancelled["answer"] is not None and cancelled["answer"].cancelled == 1
    assert [m.rcpt_tos for m in server.messages] == [["second0@example.com"]]
    assert len(server._mail_times) == 2  # the first's MAIL was sent, then withdrawn
    assert await ledger_states(stack, first["delivery_id"]) == {"cancelled": 1}
