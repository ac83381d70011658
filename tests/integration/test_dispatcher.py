import json
import uuid

import orjson
import pytest

from shared.messages import SendJob
from tests.integration.amqp_helpers import receive
from tests.integration.dispatcher_fixtures import Dispatcher, insert_account, request_body


async def test_a_request_is_stored_once_and_fanned_out_one_job_per_recipient(
    dispatcher: Dispatcher,
) -> None:
    body = request_body(account_id=dispatcher.account_id)
    await dispatcher.publish_request(body)

    event = await dispatcher.next_event()
    assert event["type"] == "delivery.accepted"
    assert event["delivery_id"] == body["delivery_id"]
    assert event["account_id"] == dispatcher.account_id
    assert event["recipients"] == 2
    assert event["metadata"] == {"crm_delivery": 123}

    queue = await dispatcher.channel.get_queue(dispatcher.account_queue())
    jobs = [SendJob.model_validate_json(m.body) for m in await receive(queue, 2)]
    assert [(j.index, j.email, j.vars) for j in jobs] == [
        (0, "a@example.com", {"plan": "gold"}), (1, "b@example.com", {"plan": "silver"})]
    assert jobs[0].job_id == f"{body['delivery_id']}:0"
    stored = await dispatcher.pool.fetchrow(
        "SELECT total, subject, html_body, accepted_at FROM deliveries WHERE delivery_id = $1",
        body["delivery_id"])
    assert stored["total"] == 2
    assert stored["html_body"] == "<p>{{name}} 様</p>"
    assert stored["accepted_at"] is not None
    states = await dispatcher.pool.fetch(
        "SELECT state FROM delivery_recipients WHERE delivery_id = $1", body["delivery_id"])
    assert {row["state"] for row in states} == {"queued"}


async def test_without_an_account_id_the_default_account_is_used(
    dispatcher: Dispatcher,
) -> None:
    async with dispatcher.pool.acquire() as db, db.transaction():
        await db.execute("UPDATE accounts SET is_default = false WHERE is_default")
        await db.execute("UPDATE accounts SET is_default = true WHERE id = $1",
                         dispatcher.account_id)
    await dispatcher.publish_request(request_body())
    event = await dispatcher.next_event()
    assert event["type"] == "delivery.accepted"
    assert event["account_id"] == dispatcher.account_id


async def test_duplicates_within_a_request_are_sent_once(dispatcher: Dispatcher) -> None:
    recipients = [{"email": "Same@Example.COM", "name": "x"},
                  {"email": "Same@example.com", "name": "y"},
                  {"email": "other@example.com", "name": "z"}]
    await dispatcher.publish_request(request_body(
        account_id=dispatcher.account_id, recipients=recipients, text="{{name}}", html=None,
        subject="hello"))
    event = await dispatcher.next_event()
    assert event["recipients"] == 2


async def expect_rejection(dispatcher: Dispatcher, reason: str,
                           delivery_id: str | None) -> None:
    if delivery_id is not None:
        event = await dispatcher.next_event()
        assert event["type"] == "delivery.rejected"
        assert event["reason"] == reason
        assert event["delivery_id"] == delivery_id
        assert event["detail"]
    [dead] = await receive(dispatcher.dead)
    assert dead.headers["x-reason"] == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"subject": ...}, "invalid_request"),
        ({"recipients": [{"email": "a@example.com, b@example.com"}]}, "invalid_request"),
        ({"recipients": [{"email": "a\u200b@example.com"}]}, "invalid_request"),
        ({"recipients": [{"email": "Yamada <a@example.com>"}]}, "invalid_request"),
        ({"subject": "hi\r\nBcc: victim@example.com"}, "invalid_request"),
        ({"subject": "=?utf-8?q?hi=0D=0ABcc:_victim@example.com?="}, "invalid_request"),
        ({"recipients": [{"email": "a@example.com", "name": "=?utf-8?q?x=0ABcc:_v@x.com?="}]},
         "invalid_request"),
        ({"headers": {"Bcc": "victim@example.com"}}, "invalid_request"),
        ({"headers": {"X-Ok": "=?utf-8?b?YQpCY2M6IHZAeC5jb20=?="}}, "invalid_request"),
        ({"unknown_field": 1}, "invalid_request"),
        ({"metadata": {"blob": "x" * 5000}}, "invalid_request"),
        ({"text": "{{coupon}}"}, "missing_placeholder"),
        ({"recipients": [{"email": "a@example.com"}]}, "missing_placeholder"),  # no name
        ({"recipients": [{"email": "a@example.com", "name": "n", "vars": {"plan": "x\ny"}}],
          "subject": "{{plan}}"}, "invalid_request"),
        ({"account_id": str(uuid.uuid4())}, "unknown_account"),
        ({"account_id": "not-a-uuid"}, "unknown_account"),
        ({"recipients": [{"email": f"r{i}@example.com", "name": "n", "vars": {"plan": "p"}}
                         for i in range(100_001)]}, "too_large"),
    ],
    ids=["no-subject", "two-addresses", "zero-width", "display-name", "crlf-subject",
         "encoded-newline-subject", "encoded-newline-name", "bcc-header",
         "encoded-newline-header", "unknown-field", "big-metadata", "missing-var",
         "missing-name", "newline-var-in-subject", "unknown-account", "non-uuid-account",
         "too-many-recipients"],
)
async def test_each_rejection_gives_one_event_and_the_message_in_mail_dead(
    dispatcher: Dispatcher, changes: dict, reason: str,
) -> None:
    body = request_body(account_id=dispatcher.account_id)
    body.update({k: v for k, v in changes.items() if v is not ...})
    for key in [k for k, v in changes.items() if v is ...]:
        del body[key]
    await dispatcher.publish_request(body)
    await expect_rejection(dispatcher, reason, body["delivery_id"])


async def test_a_personal_account_serves_only_its_owner(dispatcher: Dispatcher) -> None:
    personal = await insert_account(dispatcher.pool, personal=True, owner="sato")
    await dispatcher.topology.declare_account_queue(dispatcher.channel, personal)
    refused = request_body(account_id=personal, requested_by="tanaka")
    await dispatcher.publish_request(refused)
    await expect_rejection(dispatcher, "account_not_permitted", refused["delivery_id"])

    allowed = request_body(account_id=personal, requested_by="sato")
    await dispatcher.publish_request(allowed)
    assert (await dispatcher.next_event())["type"] == "delivery.accepted"


@pytest.mark.parametrize(
    ("raw", "has_id"),
    [
        (b"this is not json", False),
        (b"\xef\xbb\xbf" + orjson.dumps(request_body()), True),
        (b"[1, 2, 3]", False),
        (b"[" * 100_000 + b"]" * 100_000, False),
        (b'{"delivery_id": "big-number-1", "n": 1' + b"0" * 5000 + b"}", True),
        (b'{"delivery_id": "nan-1", "subject": NaN}', True),
        (b'{"delivery_id": "dup-1", "subject": "a", "subject": "b"}', True),
        (b'{"delivery_id": "missing-1"}', True),
        (b"\xff\xfe not utf-8", False),
        # Both reach the model: an integer orjson cannot store, a lone surrogate (escaped).
        (json.dumps(request_body(delivery_id="wide-int-1", metadata={"n": 10**30})).encode(),
         True),
        (json.dumps(request_body(delivery_id="surrogate-1", subject="\ud800")).encode(), True),
    ],
    ids=["not-json", "bom", "array", "deep-nesting", "huge-number", "nan", "duplicate-keys",
         "missing-fields", "not-utf8", "int-over-64-bits", "lone-surrogate"],
)
async def test_bad_input_is_rejected_and_the_dispatcher_still_serves(
    dispatcher: Dispatcher, raw: bytes, has_id: bool,
) -> None:
    message_id = f"bad-{uuid.uuid4().hex[:8]}"
    await dispatcher.publish_bytes(raw, message_id=message_id)
    # The event names the body's delivery_id when it can be read, else the message_id.
    delivery_id = message_id
    if raw.startswith(b"\xef\xbb\xbf"):
        delivery_id = orjson.loads(raw[3:])["delivery_id"]
    elif has_id:
        delivery_id = raw.split(b'"delivery_id": "')[1].split(b'"')[0].decode()
    await expect_rejection(dispatcher, "invalid_request", delivery_id)

    good = request_body(account_id=dispatcher.account_id)
    await dispatcher.publish_request(good)
    event = await dispatcher.next_event()
    assert (event["type"], event["delivery_id"]) == ("delivery.accepted", good["delivery_id"])


async def test_a_33_mib_request_is_too_large(dispatcher: Dispatcher) -> None:
    delivery_id = f"huge-{uuid.uuid4().hex[:8]}"
    raw = b'{"delivery_id": "' + delivery_id.encode() + b'", "text": "' + b"x" * (33 << 20) + b'"}'
    await dispatcher.publish_bytes(raw, message_id=delivery_id)
    await expect_rejection(dispatcher, "too_large", delivery_id)


async def test_the_same_request_twice_sends_each_recipient_once(dispatcher: Dispatcher) -> None:
    body = request_body(account_id=dispatcher.account_id)
    await dispatcher.publish_request(body)
    await dispatcher.publish_request(body)
    assert (await dispatcher.next_event())["type"] == "delivery.accepted"

    other = {**body, "subject": "another subject"}
    await dispatcher.publish_request(other)
    await expect_rejection(dispatcher, "duplicate_delivery", body["delivery_id"])

    queue = await dispatcher.channel.get_queue(dispatcher.account_queue())
    jobs = await receive(queue, 2)
    assert sorted(m.message_id for m in jobs) == [f"{body['delivery_id']}:0",
                                                  f"{body['delivery_id']}:1"]
    # Both copies were handled (the rejection came after them): no third job waits.
    assert await dispatcher.topology.account_queue_depth(
        dispatcher.channel, dispatcher.account_id) == 0


async def test_an_account_without_a_queue_is_refused_at_once_and_nothing_is_stored(
    dispatcher: Dispatcher,
) -> None:
    queue = await dispatcher.channel.get_queue(dispatcher.account_queue())
    await queue.delete(if_unused=False, if_empty=False)  # the account is being deleted
    body = request_body(account_id=dispatcher.account_id)
    await dispatcher.publish_request(body)
    await expect_rejection(dispatcher, "unknown_account", body["delivery_id"])
    assert await dispatcher.pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE delivery_id = $1", body["delivery_id"]) == 0


async def test_a_request_handled_again_after_a_crash_repeats_its_acceptance_with_the_same_id(
    dispatcher: Dispatcher,
) -> None:
    body = request_body(account_id=dispatcher.account_id)
    await dispatcher.publish_request(body)
    first = await dispatcher.next_event()
    # As if the dispatcher died after the event, before it marked the request accepted.
    await dispatcher.pool.execute(
        "UPDATE deliveries SET accepted_at = NULL WHERE delivery_id = $1", body["delivery_id"])
    await dispatcher.publish_request(body)
    second = await dispatcher.next_event()
    assert first["type"] == second["type"] == "delivery.accepted"
    assert first["event_id"] == second["event_id"]
    queue = await dispatcher.channel.get_queue(dispatcher.account_queue())
    assert len(await receive(queue, 2)) == 2
    assert await dispatcher.topology.account_queue_depth(
        dispatcher.channel, dispatcher.account_id) == 0
