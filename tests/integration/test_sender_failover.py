"""Fail-over to a standby account: while an account is paused for its provider's quota, its
waiting jobs go out through its first usable standby (the standby's server, pace and
envelope, the From the delivery asked for), events and ledger say which account sent; when
the account resumes, its jobs go back to it. A standby not allowed to send as the account's
From is never used: the jobs wait."""

import email
import email.policy
from typing import Any

import pytest

from tests.integration.dispatcher_fixtures import insert_account, request_body
from tests.integration.sender_fixtures import SenderStack, configure_account, sender_on
from tests.support.mail import recipients
from tests.support.smtp_servers import smtp_server
from tests.support.waiting import eventually

QUOTA = "550 5.4.5 Daily user sending quota exceeded."
RELAY = "relay@other.example.net"


@pytest.fixture
def sender_overrides() -> dict:
    return {"quota_wait_s": 4, "quota_hold_s": 0}


async def no_borrow(stack: SenderStack) -> bool:
    return stack.account_id not in stack.supervisor.borrows


async def standby_account(stack: SenderStack, server: Any, **fields: Any) -> str:
    pool = stack.dispatcher.pool
    account_id = await insert_account(pool)
    await stack.dispatcher.topology.declare_account_queue(stack.dispatcher.channel, account_id)
    await configure_account(pool, account_id, smtp_host=server.host, smtp_port=server.port,
                            from_address=RELAY, **fields)
    await stack.announce_change(account_id)
    return account_id


async def test_a_paused_accounts_jobs_go_through_its_standby_and_come_back_after(
    start_sender: Any,
) -> None:
    async with smtp_server(refusal=("data", QUOTA), refusals=1) as home_server, \
            smtp_server() as standby_server:
        stack = await sender_on(start_sender, home_server)
        standby = await standby_account(stack, standby_server,
                                        allowed_from=["@shop.example.com"])
        await configure_account(stack.dispatcher.pool, stack.account_id,
                                standby_account_ids=[standby])
        await stack.announce_change()
        first = request_body(account_id=stack.account_id, recipients=recipients(5, "f"))
        await stack.dispatcher.publish_request(first)
        completed = await stack.completed(first["delivery_id"])
        await stack.wait_event(lambda e: e["type"] == "account.resumed")
        # The supervisor ends the fail-over after the worker's resume: a job published
        # between the two may still go out through the standby, rightly.
        await eventually(lambda: no_borrow(stack))
        second = request_body(account_id=stack.account_id, recipients=recipients(2, "s"))
        await stack.dispatcher.publish_request(second)
        await stack.completed(second["delivery_id"])

    assert (completed["sent"], completed["failed"]) == (5, 0)
    # The first delivery through the standby, in the account's name; the second at home.
    assert sorted(m.rcpt_tos[0] for m in standby_server.messages) == \
        [f"f{i}@example.com" for i in range(5)]
    assert sorted(m.rcpt_tos[0] for m in home_server.messages) == ["s0@example.com",
                                                                    "s1@example.com"]
    for message in standby_server.messages:
        assert message.mail_from == RELAY  # the standby's own envelope
        parsed = email.message_from_bytes(message.data, policy=email.policy.default)
        assert parsed["From"].addresses[0].addr_spec == "news@shop.example.com"
    sent = [e for e in stack.of_type("mail.sent") if e["delivery_id"] == first["delivery_id"]]
    assert {(e["account_id"], e["requested_account_id"]) for e in sent} == {
        (standby, stack.account_id)}
    at_home = [e for e in stack.of_type("mail.sent")
               if e["delivery_id"] == second["delivery_id"]]
    assert all("requested_account_id" not in e for e in at_home)
    rows = await stack.dispatcher.pool.fetch(
        "SELECT DISTINCT account_id::text FROM delivery_recipients WHERE delivery_id = $1",
        first["delivery_id"])
    assert [row["account_id"] for row in rows] == [standby]


async def test_a_standby_not_allowed_to_send_as_the_accounts_from_is_never_used(
    start_sender: Any,
) -> None:
    async with smtp_server(refusal=("data", QUOTA), refusals=1) as home_server, \
            smtp_server() as standby_server:
        stack = await sender_on(start_sender, home_server)
        standby = await standby_account(stack, standby_server)  # its own From only
        await configure_account(stack.dispatcher.pool, stack.account_id,
                                standby_account_ids=[standby])
        await stack.announce_change()
        body = request_body(account_id=stack.account_id, recipients=recipients(3, "w"))
        await stack.dispatcher.publish_request(body)
        completed = await stack.completed(body["delivery_id"])

    assert completed["sent"] == 3
    assert standby_server.messages == []
    assert sorted(m.rcpt_tos[0] for m in home_server.messages) == \
        [f"w{i}@example.com" for i in range(3)]
    assert stack.of_type("account.resumed")  # they waited for the account itself
