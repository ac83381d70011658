"""Delivery control on the dispatcher's side (contract §6): the HTTP door, scheduled
deliveries, cancel. Real broker and database; the HTTP API in process."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import orjson

from services.dispatcher import repository
from shared.topology import make_message, publish
from tests.integration.accounts_fixtures import auth
from tests.integration.amqp_helpers import receive
from tests.integration.dispatcher_fixtures import Dispatcher, request_body
from tests.support.waiting import eventually


def _same_but_ids(a: dict, b: dict) -> bool:
    drop = {"event_id", "occurred_at", "delivery_id"}
    return {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop}


async def _states(dispatcher: Dispatcher, delivery_id: str) -> dict[str, int]:
    rows = await dispatcher.pool.fetch(
        "SELECT state, count(*) AS n FROM delivery_recipients WHERE delivery_id = $1 "
        "GROUP BY state", delivery_id)
    return {row["state"]: row["n"] for row in rows}


async def _queued_jobs(dispatcher: Dispatcher, urgent: bool = False) -> int:
    topology = dispatcher.topology
    name = (topology.urgent_queue if urgent else topology.account_queue)(dispatcher.account_id)
    underlay = await dispatcher.channel.get_underlay_channel()
    return (await underlay.queue_declare(name, passive=True)).message_count or 0


async def _has_jobs(dispatcher: Dispatcher, count: int) -> bool:
    return await _queued_jobs(dispatcher) == count


async def _no_more_events(dispatcher: Dispatcher, within_s: float = 1.0) -> None:
    try:
        event = await dispatcher.next_event(timeout=within_s)
    except TimeoutError:
        return
    raise AssertionError(f"an event came: {event['type']}")


# -- the HTTP door ----------------------------------------------------------------------------


async def test_a_request_by_http_gives_the_events_of_the_same_request_by_amqp(
    dispatcher: Dispatcher,
) -> None:
    by_amqp = request_body(account_id=dispatcher.account_id)
    await dispatcher.publish_request(by_amqp)
    amqp_accepted = await dispatcher.next_event()

    by_http = request_body(account_id=dispatcher.account_id)
    del by_http["requested_by"]  # defaults to the token's sub
    async with dispatcher.http() as client:
        answer = await client.post("/v1/deliveries", json=by_http,
                                   headers=auth("tanaka", admin=False))
        assert answer.status_code == 202, answer.text
        assert answer.json()["delivery_id"] == by_http["delivery_id"]
        http_accepted = await dispatcher.next_event()
        assert http_accepted["type"] == "delivery.accepted"
        assert http_accepted["delivery_id"] == by_http["delivery_id"]
        assert _same_but_ids(amqp_accepted, http_accepted)
        stored = await dispatcher.pool.fetchrow(
            "SELECT requested_by, total FROM deliveries WHERE delivery_id = $1",
            by_http["delivery_id"])
        assert (stored["requested_by"], stored["total"]) == ("tanaka", 2)

        status = await client.get(f"/v1/deliveries/{by_http['delivery_id']}",
                                  headers=auth("tanaka", admin=False))
        assert status.json()["queued"] == 2

        # A repeat by either way is a repeat: accepted once, published once.
        await dispatcher.publish_request({**by_http, "requested_by": "tanaka"})
        again = await client.post("/v1/deliveries", json=by_amqp,
                                  headers=auth("tanaka", admin=False))
        assert again.status_code == 202
        await _no_more_events(dispatcher)
    assert await _queued_jobs(dispatcher) == 4


async def test_a_bad_body_by_http_answers_at_once_with_its_reason(
    dispatcher: Dispatcher,
) -> None:
    async with dispatcher.http() as client:
        headers = auth("tanaka", admin=False)
        answer = await client.post("/v1/deliveries", content=b'{"delivery_id": "x", "x": 1',
                                   headers=headers)
        assert answer.status_code == 422
        assert answer.json()["reason"] == "invalid_request"
        body = request_body(account_id=dispatcher.account_id, recipients=[])
        answer = await client.post("/v1/deliveries", json=body, headers=headers)
        assert (answer.status_code, answer.json()["reason"]) == (422, "invalid_request")
        assert answer.json()["delivery_id"] == body["delivery_id"]
        big = request_body(account_id=dispatcher.account_id, text="x" * 70_000)
        answer = await client.post("/v1/deliveries", json=big, headers=headers)
        assert (answer.status_code, answer.json()["reason"]) == (413, "too_large")
        late = request_body(account_id=dispatcher.account_id,
                            send_at="2026-12-02T10:00:00+09:00",
                            expires_at="2026-12-02T09:00:00+09:00")
        answer = await client.post("/v1/deliveries", json=late, headers=headers)
        assert answer.status_code == 422
        assert "expires_at" in answer.json()["detail"]
        unauthenticated = await client.post("/v1/deliveries", json=request_body())
        assert unauthenticated.status_code == 401
    await _no_more_events(dispatcher, within_s=0.5)


async def test_only_an_administrator_may_request_in_someone_elses_name(
    dispatcher: Dispatcher,
) -> None:
    body = request_body(account_id=dispatcher.account_id, requested_by="suzuki")
    async with dispatcher.http() as client:
        refused = await client.post("/v1/deliveries", json=body,
                                    headers=auth("tanaka", admin=False))
        assert refused.status_code == 403
        await _no_more_events(dispatcher, within_s=0.5)
        taken = await client.post("/v1/deliveries", json=body, headers=auth("ops"))
        assert taken.status_code == 202
    accepted = await dispatcher.next_event()
    assert (accepted["type"], accepted["delivery_id"]) == ("delivery.accepted",
                                                          body["delivery_id"])


async def test_an_unknown_account_by_http_is_rejected_by_event_as_by_amqp(
    dispatcher: Dispatcher,
) -> None:
    body = request_body(account_id="00000000-0000-4000-8000-000000000000")
    async with dispatcher.http() as client:
        answer = await client.post("/v1/deliveries", json=body,
                                   headers=auth("tanaka", admin=False))
    assert answer.status_code == 202  # queued; the account is checked on the common path
    rejected = await dispatcher.next_event()
    assert (rejected["type"], rejected["reason"]) == ("delivery.rejected", "unknown_account")


# -- scheduled deliveries ---------------------------------------------------------------------


async def test_a_scheduled_delivery_is_accepted_at_once_and_fanned_out_at_its_time_across_a_restart(
    dispatcher: Dispatcher,
) -> None:
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    body = request_body(account_id=dispatcher.account_id, send_at=send_at.isoformat())
    await dispatcher.publish_request(body)
    accepted = await dispatcher.next_event()
    assert accepted["type"] == "delivery.accepted"
    assert datetime.fromisoformat(accepted["send_at"]) == send_at
    assert await _states(dispatcher, body["delivery_id"]) == {"scheduled": 2}
    assert await _queued_jobs(dispatcher) == 0
    async with dispatcher.http() as client:
        status = await client.get(f"/v1/deliveries/{body['delivery_id']}", headers=auth())
        assert (status.json()["state"], status.json()["scheduled"]) == ("scheduled", 2)

    # The dispatcher "restarts": its schedule is gone; a new one reads the table.
    await dispatcher.stop_schedule()
    assert await _queued_jobs(dispatcher) == 0
    restarted = dispatcher.new_schedule()
    running = asyncio.create_task(restarted.run())
    try:
        await eventually(lambda: _has_jobs(dispatcher, 2), timeout=10)
        assert datetime.now(UTC) >= send_at
        assert await _states(dispatcher, body["delivery_id"]) == {"queued": 2}
    finally:
        running.cancel()


async def test_one_schedule_owner_among_dispatchers_and_another_takes_over(
    dispatcher: Dispatcher,
) -> None:
    async def owned_by_the_first() -> bool:
        return dispatcher.schedule.owner

    await eventually(owned_by_the_first, timeout=5)
    second = dispatcher.new_schedule()
    running = asyncio.create_task(second.run())
    try:
        async def second_tried() -> bool:
            return second.tries > 0

        await eventually(second_tried, timeout=5)
        assert not second.owner
        await dispatcher.stop_schedule()  # the owner's dispatcher stops

        async def owned_by_the_second() -> bool:
            return second.owner

        await eventually(owned_by_the_second, timeout=5)
        assert not dispatcher.schedule.owner
    finally:
        running.cancel()


# -- cancel -----------------------------------------------------------------------------------


async def test_cancelling_a_scheduled_delivery_sends_nothing_and_completes_it(
    dispatcher: Dispatcher,
) -> None:
    send_at = datetime.now(UTC) + timedelta(seconds=1)
    body = request_body(account_id=dispatcher.account_id, send_at=send_at.isoformat())
    await dispatcher.publish_request(body)
    await dispatcher.next_event()
    delivery_id = body["delivery_id"]
    async with dispatcher.http() as client:
        answer = await client.post(f"/v1/deliveries/{delivery_id}/cancel",
                                   headers=auth("tanaka", admin=False))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"delivery_id": delivery_id, "state": "cancelled", "sent": 0,
                                 "cancelled": 2, "total": 2}
        cancelled = await dispatcher.next_event()
        assert (cancelled["type"], cancelled["sent"], cancelled["cancelled"],
                cancelled["total"]) == ("delivery.cancelled", 0, 2, 2)
        assert cancelled["metadata"] == {"crm_delivery": 123}
        completed = await dispatcher.next_event()
        assert (completed["type"], completed["sent"], completed["failed"],
                completed["cancelled"], completed["total"]) == ("delivery.completed", 0, 0, 2, 2)

        # Idempotent: the same counts, nothing published again, by either way.
        again = await client.post(f"/v1/deliveries/{delivery_id}/cancel", json={},
                                  headers=auth())
        assert again.json() == answer.json()
        await dispatcher.publish_cancel(delivery_id, "tanaka")
        await _no_more_events(dispatcher, within_s=1.0 + (send_at - datetime.now(UTC))
                              .total_seconds())
        status = await client.get(f"/v1/deliveries/{delivery_id}", headers=auth())
        assert (status.json()["state"], status.json()["cancelled"]) == ("completed", 2)
    assert await _queued_jobs(dispatcher) == 0
    assert await _states(dispatcher, delivery_id) == {"cancelled": 2}


async def test_a_cancel_from_someone_who_is_not_the_requester_is_refused(
    dispatcher: Dispatcher,
) -> None:
    body = request_body(account_id=dispatcher.account_id)
    await dispatcher.publish_request(body)
    await dispatcher.next_event()
    delivery_id = body["delivery_id"]
    async with dispatcher.http() as client:
        refused = await client.post(f"/v1/deliveries/{delivery_id}/cancel",
                                    headers=auth("suzuki", admin=False))
        assert refused.status_code == 404  # as for its status: not even its existence
    await dispatcher.publish_cancel(delivery_id, "suzuki")
    [dead] = await receive(dispatcher.dead)
    assert dead.headers["x-reason"] == "not_permitted"
    assert dead.routing_key == "delivery.cancel"
    await dispatcher.publish_cancel("no-such-delivery", "tanaka")
    [dead] = await receive(dispatcher.dead)
    assert dead.headers["x-reason"] == "unknown_delivery"
    await _no_more_events(dispatcher, within_s=0.5)
    assert await _states(dispatcher, delivery_id) == {"queued": 2}


async def test_a_cancel_by_amqp_cancels_what_is_queued(dispatcher: Dispatcher) -> None:
    body = request_body(account_id=dispatcher.account_id)
    await dispatcher.publish_request(body)
    await dispatcher.next_event()
    await dispatcher.publish_cancel(body["delivery_id"], "tanaka")
    cancelled = await dispatcher.next_event()
    assert (cancelled["type"], cancelled["cancelled"]) == ("delivery.cancelled", 2)
    completed = await dispatcher.next_event()
    assert (completed["type"], completed["cancelled"]) == ("delivery.completed", 2)
    assert orjson.loads(orjson.dumps(cancelled))["delivery_id"] == body["delivery_id"]


async def test_a_cancel_committed_but_never_announced_is_announced_by_the_schedule(
    dispatcher: Dispatcher,
) -> None:
    body = request_body(account_id=dispatcher.account_id)
    await dispatcher.publish_request(body)
    await dispatcher.next_event()
    # The dispatcher died between the cancel's commit and its events.
    async with dispatcher.pool.acquire() as db:
        await repository.cancel(db, body["delivery_id"], "tanaka")
    cancelled = await dispatcher.next_event(timeout=10)
    assert (cancelled["type"], cancelled["cancelled"]) == ("delivery.cancelled", 2)
    completed = await dispatcher.next_event()
    assert (completed["type"], completed["cancelled"]) == ("delivery.completed", 2)
    await _no_more_events(dispatcher, within_s=1.0)


async def test_the_list_of_deliveries_shows_a_user_theirs_and_an_administrator_all(
    dispatcher: Dispatcher,
) -> None:
    mine = request_body(account_id=dispatcher.account_id)
    theirs = request_body(account_id=dispatcher.account_id, requested_by="suzuki")
    for body in (mine, theirs):
        await dispatcher.publish_request(body)
        await dispatcher.next_event()
    params = {"account_id": dispatcher.account_id}
    async with dispatcher.http() as client:
        as_tanaka = await client.get("/v1/deliveries", params=params,
                                     headers=auth("tanaka", admin=False))
        assert [d["delivery_id"] for d in as_tanaka.json()["items"]] == [mine["delivery_id"]]
        item = as_tanaka.json()["items"][0]
        assert (item["state"], item["total"], item["sent"]) == ("queued", 2, 0)
        as_admin = await client.get("/v1/deliveries", params=params, headers=auth())
        assert [d["delivery_id"] for d in as_admin.json()["items"]] == [
            theirs["delivery_id"], mine["delivery_id"]]  # newest first
        assert as_admin.json()["total"] == 2
        done = await client.get("/v1/deliveries", params={**params, "state": "completed"},
                                headers=auth())
        assert done.json()["items"] == []


# -- the suppression list -----------------------------------------------------------------------


async def test_a_suppressed_address_is_left_out_counted_and_listed(
    dispatcher: Dispatcher,
) -> None:
    unique = uuid.uuid4().hex[:8]
    gone = f"Gone.{unique}@Example.com"
    async with dispatcher.http() as client:
        refused = await client.post("/v1/suppressions", json={"email": gone},
                                    headers=auth("tanaka", admin=False))
        assert refused.status_code == 403
        added = await client.post("/v1/suppressions", json={
            "email": gone, "reason": "hard", "detail": "550 5.1.1 user unknown"},
            headers=auth())
        assert added.status_code == 201, added.text
        assert (added.json()["reason"], added.json()["source"]) == ("hard", "admin")
        found = await client.get("/v1/suppressions", params={"q": unique}, headers=auth())
        assert [row["email"].lower() for row in found.json()["items"]] == [gone.lower()]

        body = request_body(account_id=dispatcher.account_id, recipients=[
            {"email": gone.lower(), "name": "n", "vars": {"plan": "gold"}},
            {"email": f"kept.{unique}@example.com", "name": "m", "vars": {"plan": "gold"}}])
        await dispatcher.publish_request(body)
        accepted = await dispatcher.next_event()
        assert (accepted["recipients"], accepted["suppressed"]) == (2, 1)
        assert await _queued_jobs(dispatcher) == 1
        assert await _states(dispatcher, body["delivery_id"]) == {"queued": 1, "suppressed": 1}
        status = await client.get(f"/v1/deliveries/{body['delivery_id']}", headers=auth())
        assert (status.json()["suppressed"], status.json()["total"]) == (1, 2)

        # Removed (URL-encoded, any case): the next delivery sends to it again.
        removed = await client.delete(f"/v1/suppressions/{quote(gone.upper())}",
                                      headers=auth())
        assert removed.status_code == 204
        again = await client.delete(f"/v1/suppressions/{quote(gone)}", headers=auth())
        assert again.status_code == 404
    body = request_body(account_id=dispatcher.account_id, recipients=[
        {"email": gone, "name": "n", "vars": {"plan": "gold"}}])
    await dispatcher.publish_request(body)
    accepted = await dispatcher.next_event()
    assert accepted["suppressed"] == 0


async def test_a_delivery_all_suppressed_completes_at_once_and_an_admin_may_send_past_it(
    dispatcher: Dispatcher,
) -> None:
    gone = f"reset.{uuid.uuid4().hex[:8]}@example.com"
    async with dispatcher.http() as client:
        await client.post("/v1/suppressions", json={"email": gone, "reason": "complaint"},
                          headers=auth())
        body = request_body(account_id=dispatcher.account_id, recipients=[
            {"email": gone, "name": "n", "vars": {"plan": "gold"}}])
        await dispatcher.publish_request(body)
        accepted = await dispatcher.next_event()
        assert (accepted["recipients"], accepted["suppressed"]) == (1, 1)
        completed = await dispatcher.next_event()
        assert (completed["type"], completed["sent"], completed["suppressed"],
                completed["total"]) == ("delivery.completed", 0, 1, 1)

        reset = request_body(account_id=dispatcher.account_id, recipients=[
            {"email": gone, "name": "n", "vars": {"plan": "gold"}}])
        refused = await client.post("/v1/deliveries?ignore_suppressions=true", json=reset,
                                    headers=auth("tanaka", admin=False))
        assert refused.status_code == 403
        taken = await client.post("/v1/deliveries?ignore_suppressions=true",
                                  json={**reset, "requested_by": "tanaka"}, headers=auth())
        assert taken.status_code == 202
    accepted = await dispatcher.next_event()
    assert (accepted["delivery_id"], accepted["suppressed"]) == (reset["delivery_id"], 0)
    assert await _queued_jobs(dispatcher) == 1

    # The header alone, from a publisher the broker does not vouch for: the list holds.
    exchange = await dispatcher.channel.get_exchange(dispatcher.topology.requests_exchange)
    forged = request_body(account_id=dispatcher.account_id, recipients=[
        {"email": gone, "name": "n", "vars": {"plan": "gold"}}])
    await publish(exchange, "delivery.request", make_message(
        orjson.dumps(forged), message_id=forged["delivery_id"],
        headers={"x-ignore-suppressions": "true"}))
    accepted = await dispatcher.next_event()
    assert accepted["suppressed"] == 1
