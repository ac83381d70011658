import asyncio
import email
import email.policy
from typing import Any

from services.sender import metrics
from shared.messages import SendJob
from shared.topology import make_message, publish
from tests.integration.dispatcher_fixtures import request_body
from tests.integration.sender_fixtures import SenderStack, configure_account, sender_on
from tests.support.mail import recipients
from tests.support.smtp_servers import auth_server, smtp_server
from tests.support.waiting import eventually

USER = "news@shop.example.com"
PASSWORD = "right-password"


async def ledger_states(stack: SenderStack, delivery_id: str) -> dict[str, int]:
    rows = await stack.dispatcher.pool.fetch(
        "SELECT state, count(*) AS n FROM delivery_recipients WHERE delivery_id = $1 "
        "GROUP BY state", delivery_id)
    return {row["state"]: row["n"] for row in rows}


async def deliver(stack: SenderStack, count: int, timeout: float = 20) -> tuple[dict, dict]:
    """A request of `count` recipients to the stack's account: its body and, once it came,
    its `delivery.completed`."""
    body = request_body(account_id=stack.account_id, recipients=recipients(count))
    await stack.dispatcher.publish_request(body)
    return body, await stack.completed(body["delivery_id"], timeout=timeout)


async def test_a_delivery_is_sent_recorded_and_completed(start_sender: Any) -> None:
    async with auth_server({USER: PASSWORD}) as server:
        stack = await sender_on(start_sender, server, smtp_auth=True, smtp_username=USER,
                                smtp_password=PASSWORD, local_hostname="crm.example.com")
        body, completed = await deliver(stack, 3)
        assert (completed["sent"], completed["failed"], completed["total"]) == (3, 0, 3)
        assert completed["metadata"] == {"crm_delivery": 123}
        sent = stack.of_type("mail.sent")
        assert sorted(e["recipient"] for e in sent) == [f"r{i}@example.com" for i in range(3)]
        assert all(e["smtp_code"] == 250 and e["attempts"] == 1 for e in sent)
        assert len(server.messages) == 3
        assert server.connections == 1
        assert server.ehlo_names[0] == "crm.example.com"
        mail = email.message_from_bytes(server.messages[0].data, policy=email.policy.default)
        assert mail["Subject"].endswith("様 11月のお知らせ")
        assert mail["X-Campaign"] == "2026-11"
        assert await ledger_states(stack, body["delivery_id"]) == {"sent": 3}


async def test_the_pause_between_sends_holds_at_the_server(start_sender: Any) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server, send_interval_ms=300)
        await deliver(stack, 5)
        gaps = [b.started_at - a.ended_at
                for a, b in zip(server.messages, server.messages[1:], strict=False)]
        assert len(gaps) == 4
        assert min(gaps) >= 0.300


async def test_a_refused_recipient_fails_alone(start_sender: Any) -> None:
    async with smtp_server(refuse_recipients=frozenset({"r1@example.com"})) as server:
        stack = await sender_on(start_sender, server)
        _, completed = await deliver(stack, 3)
        assert (completed["sent"], completed["failed"]) == (2, 1)
        [failed] = stack.of_type("mail.failed")
        assert failed["recipient"] == "r1@example.com"
        assert (failed["stage"], failed["smtp_code"], failed["permanent"]) == (
            "recipient", 550, True)
        assert failed["smtp_message"] == "5.1.1 User unknown"
        assert server.connections == 1


async def test_a_wrong_password_pauses_the_account_and_a_fix_sends_everything(
    start_sender: Any,
) -> None:
    async with auth_server({USER: PASSWORD}) as server:
        stack = await sender_on(start_sender, server, smtp_auth=True, smtp_username=USER,
                                smtp_password="wrong-password")
        body = request_body(account_id=stack.account_id, recipients=recipients(3))
        await stack.dispatcher.publish_request(body)

        paused = await stack.wait_event(lambda e: e["type"] == "account.paused")
        assert paused["reason"] == "auth"
        assert paused["smtp_code"] == 535
        assert paused["smtp_message"] == "5.7.8 Username and Password not accepted"
        assert not stack.of_type("mail.failed")
        assert await stack.dispatcher.pool.fetchval(
            "SELECT paused FROM accounts WHERE id = $1", stack.account_id)
        assert await ledger_states(stack, body["delivery_id"]) == {"queued": 3}

        await configure_account(stack.dispatcher.pool, stack.account_id,
                                smtp_password=PASSWORD)
        await stack.announce_change()
        completed = await stack.wait_event(lambda e: e["type"] == "delivery.completed")
        assert completed["sent"] == 3
        assert stack.of_type("account.resumed")
        assert not stack.of_type("mail.failed")
        assert len(server.messages) == 3


async def test_a_connection_lost_after_data_is_unknown_and_not_sent_twice(
    start_sender: Any,
) -> None:
    async with smtp_server(drop_after_data=True) as server:
        stack = await sender_on(start_sender, server)
        body, completed = await deliver(stack, 1)
        assert (completed["sent"], completed["failed"]) == (0, 1)
        [failed] = stack.of_type("mail.failed")
        assert failed["outcome"] == "unknown"
        assert failed["permanent"] is False
        assert len(server.messages) == 1
        assert await ledger_states(stack, body["delivery_id"]) == {"unknown": 1}


async def test_one_connection_carries_a_hundred_messages(start_sender: Any) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server)
        _, completed = await deliver(stack, 100, timeout=60)
        assert completed["sent"] == 100
        assert len(server.messages) == 100
        assert server.connections == 1


async def test_a_throttling_provider_defers_and_slows_the_account_and_everything_arrives(
    start_sender: Any,
) -> None:
    # The provider takes 3 mails per second and refuses more with 421.
    async with smtp_server(rate_limit=(3, 1.0)) as server:
        stack = await sender_on(start_sender, server, send_interval_ms=0)
        _, completed = await deliver(stack, 8, timeout=60)
        assert (completed["sent"], completed["failed"]) == (8, 0)
        assert server.refused_by_rate >= 1
        throttled = stack.of_type("account.throttled")
        assert throttled and throttled[0]["interval_ms"] >= 1000
        assert stack.of_type("mail.deferred")
        assert not stack.of_type("mail.failed")
        assert len({m.rcpt_tos[0] for m in server.messages}) == 8


async def test_with_an_interval_under_the_providers_cap_nothing_is_refused(
    start_sender: Any,
) -> None:
    async with smtp_server(rate_limit=(3, 1.0)) as server:
        stack = await sender_on(start_sender, server, send_interval_ms=400)
        _, completed = await deliver(stack, 6, timeout=30)
        assert completed["sent"] == 6
        assert server.refused_by_rate == 0
        assert not stack.of_type("mail.deferred")


async def test_an_unreachable_server_pauses_the_account_and_a_probe_resumes_it(
    start_sender: Any,
) -> None:
    stack: SenderStack = await start_sender()
    async with smtp_server() as server:
        port = server.port
    # Nobody listens on that port now.
    await configure_account(stack.dispatcher.pool, stack.account_id, smtp_host="127.0.0.1",
                            smtp_port=port)
    await stack.announce_change()
    body = request_body(account_id=stack.account_id, recipients=recipients(3))
    await stack.dispatcher.publish_request(body)
    paused = await stack.wait_event(lambda e: e["type"] == "account.paused", timeout=30)
    assert paused["reason"] == "connect"
    assert not stack.of_type("mail.failed")

    async with smtp_server(port=port) as server:
        await stack.wait_event(lambda e: e["type"] == "account.resumed", timeout=30)
        completed = await stack.wait_event(lambda e: e["type"] == "delivery.completed",
                                           timeout=30)
        assert completed["sent"] == 3
        await eventually(lambda: asyncio.sleep(0, len(server.messages) == 3))


async def test_the_lease_is_kept_through_the_pause_and_given_back_on_stop(
        start_sender: Any) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server, send_interval_ms=2000,
                                settings={"lease_hold_s": 3})
        body, _ = await deliver(stack, 1)
        row = await stack.dispatcher.pool.fetchrow(
            "SELECT lease_owner, extract(epoch FROM lease_until - last_end)::float8 AS held "
            "FROM account_runtime WHERE account_id = $1", stack.account_id)
        # Kept for the pause and the hold: the next send of this sender needs no round trip,
        # and no other sender can start before the pause is over.
        # One worker's: the replica's name and the worker's own token.
        assert row["lease_owner"].rpartition("/")[0] == stack.settings.replica_id
        assert 4.9 < row["held"] < 5.1

        await stack.stop()
        owner = await stack.dispatcher.pool.fetchval(
            "SELECT lease_owner FROM account_runtime WHERE account_id = $1", stack.account_id)
        assert owner is None
        assert await stack.dispatcher.pool.fetchval(
            "SELECT count(*) FROM sender_outbox WHERE body->>'delivery_id' = $1",
            body["delivery_id"]) == 0


async def test_a_copy_of_a_job_already_sent_is_not_sent_again(start_sender: Any) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server)
        body, _ = await deliver(stack, 1)
        [first] = stack.of_type("mail.sent")

        # The same job once more, as after a crash between the record and the ack.
        job = SendJob(job_id=f"{body['delivery_id']}:0", delivery_id=body["delivery_id"],
                      account_id=stack.account_id, index=0, **recipients(1)[0])
        exchange = await stack.dispatcher.channel.get_exchange(
            stack.dispatcher.topology.send_exchange, ensure=False)
        await publish(exchange, stack.account_id, make_message(job, message_id=job.job_id))
        again = await stack.wait_event(
            lambda e: e["type"] == "mail.sent" and e is not first)
        assert again["event_id"] == first["event_id"]  # the same event, for deduplication
        assert len(server.messages) == 1
        assert await ledger_states(stack, body["delivery_id"]) == {"sent": 1}


async def test_a_send_outlasting_the_kept_lease_renews_it(start_sender: Any) -> None:
    async with smtp_server(data_delay_s=1.8) as server:
        # The lease kept after the first send ends 2 s after it; the second send takes 1.8 s
        # from a few milliseconds later, so it must renew the lease on its way.
        stack = await sender_on(start_sender, server, send_interval_ms=0,
                                settings={"lease_hold_s": 2.0})
        renewals = metrics.LEASE_RENEWALS._value.get()
        body, _ = await deliver(stack, 2)
        assert metrics.LEASE_RENEWALS._value.get() == renewals + 1
        assert len(server.messages) == 2
        assert await ledger_states(stack, body["delivery_id"]) == {"sent": 2}
