import uuid

import jwt
import pytest
from aio_pika.abc import AbstractRobustConnection

from services.config_svc import repository
from services.config_svc.cli import rotate_keys
from services.config_svc.settings import ConfigSettings
from shared.accounts import smtp_endpoint
from shared.crypto import SecretBox, UndecryptableSecret
from shared.topology import make_message, publish
from tests.integration.accounts_fixtures import (
    JWT_SECRET,
    KEY,
    NEXT_KEY,
    TOPOLOGY,
    AccountsApi,
    account_body,
    auth,
    collect_events,
    events_queue,
    expired_token,
    start_relay,
    stop_relay,
)
from tests.integration.amqp_helpers import receive
from tests.support.smtp_servers import auth_server
from tests.support.waiting import eventually


async def test_an_admin_registers_an_account_and_its_queue_exists(
    accounts_api: AccountsApi,
) -> None:
    name = f"Newsletter 2026 {uuid.uuid4().hex[:6]}"
    created = await accounts_api.create(name=name)
    assert created["name"] == name
    assert created["created_by"] == "admin"
    assert created["smtp_password_set"] is True
    assert "smtp_password" not in created
    assert created["warnings"] == []

    queue = await accounts_api.channel.declare_queue(
        TOPOLOGY.account_queue(created["id"]), passive=True)
    assert queue.declaration_result.message_count == 0

    read = await accounts_api.client.get(f"/v1/accounts/{created['id']}", headers=auth("bob",
                                                                                       False))
    assert read.status_code == 200
    assert read.json()["from_name"] == "ショップ"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("from_address", "Shop <news@shop.example.com>"),
        ("from_address", '"quoted local"@shop.example.com'),
        ("from_address", "news@[192.0.2.1]"),
        ("from_address", "news@shop.example.com\r\nBcc: x@y.z"),
        ("reply_to", "not an address"),
        ("smtp_host", "smtp.example.com\r\nX"),
        ("smtp_host", "smtp example.com"),
        ("smtp_host", "smtp\x00.example.com"),
        ("smtp_port", 0),
        ("smtp_port", 65536),
        ("local_hostname", "bad_host!"),
        ("send_interval_ms", -1),
        ("send_interval_ms", 1_500_001),
        ("tls", "tls"),
        ("name", "two\nlines"),
        ("name", ...),
        ("smtp_host", ...),
    ],
)
async def test_a_bad_value_answers_422_naming_the_field(
    accounts_api: AccountsApi, field: str, value: object
) -> None:
    response = await accounts_api.client.post(
        "/v1/accounts", json=account_body(**{field: value}), headers=auth())
    assert response.status_code == 422, response.text
    assert field in response.text


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"smtp_auth": True, "smtp_username": None}, "smtp_username"),
        ({"smtp_auth": True, "smtp_password": None}, "smtp_password"),
        ({"pop_before_smtp": True, "pop_host": "pop.example.com", "pop_port": 995}, "pop_username"),
        ({"pop_before_smtp": True, "pop_username": "u", "pop_port": 995}, "pop_host"),
        ({"personal": True, "is_default": True}, "is_default"),
    ],
)
async def test_fields_required_together_are_checked(
    accounts_api: AccountsApi, changes: dict, field: str
) -> None:
    response = await accounts_api.client.post(
        "/v1/accounts", json=account_body(**changes), headers=auth())
    assert response.status_code == 422
    assert any(error["loc"][-1] == field for error in response.json()["detail"])


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"smtp_port": 465, "tls": "starttls"}, "465"),
        ({"smtp_port": 587, "tls": "ssl"}, "587"),
        ({"tls": "none"}, "unencrypted"),
    ],
)
async def test_doubtful_settings_are_accepted_with_a_warning(
    accounts_api: AccountsApi, changes: dict, words: str
) -> None:
    created = await accounts_api.create(**changes)
    assert any(words in warning for warning in created["warnings"])


async def test_mass_assignment_duplicate_keys_and_huge_bodies_are_refused(
    accounts_api: AccountsApi,
) -> None:
    client = accounts_api.client
    for extra in ({"created_by": "mallory"}, {"id": str(uuid.uuid4())}, {"owner": "mallory"}):
        response = await client.post("/v1/accounts", json=account_body(**extra), headers=auth())
        assert response.status_code == 422, extra
    duplicate = b'{"name": "a", "name": "b", "from_address": "a@shop.example.com", ' \
                b'"smtp_host": "h.example.com", "smtp_port": 25}'
    response = await client.post("/v1/accounts", content=duplicate,
                                 headers={**auth(), "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500
    assert "duplicate" in response.text
    huge = account_body(from_name="x" * 70_000)
    response = await client.post("/v1/accounts", json=huge, headers=auth())
    assert response.status_code == 413


async def test_names_are_unique(accounts_api: AccountsApi) -> None:
    first = await accounts_api.create()
    response = await accounts_api.client.post(
        "/v1/accounts", json=account_body(name=first["name"].upper()), headers=auth())
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer " + expired_token(),
        "Bearer " + jwt.encode({"sub": "admin", "roles": ["mail-admin"], "exp": 9999999999},
                               None, algorithm="none"),
        "Bearer " + jwt.encode({"sub": "admin", "roles": ["mail-admin"], "exp": 9999999999},
                               "another-secret-of-enough-length!!", algorithm="HS256"),
        "Bearer " + jwt.encode({"sub": "admin", "roles": ["mail-admin"]}, JWT_SECRET,
                               algorithm="HS256"),
        "Bearer not.a.token",
    ],
    ids=["missing", "expired", "alg-none", "wrong-signature", "no-exp", "garbage"],
)
async def test_requests_without_a_valid_token_answer_401(
    accounts_api: AccountsApi, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    response = await accounts_api.client.get("/v1/accounts", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_only_administrators_change_accounts(accounts_api: AccountsApi) -> None:
    created = await accounts_api.create()
    user = auth("bob", admin=False)
    client = accounts_api.client
    account = f"/v1/accounts/{created['id']}"
    assert (await client.post("/v1/accounts", json=account_body(), headers=user)).status_code == 403
    assert (await client.patch(account, json={"from_name": "x"}, headers=user)).status_code == 403
    assert (await client.delete(account, headers=user)).status_code == 403
    assert (await client.post(f"{account}/pause", headers=user)).status_code == 403
    assert (await client.post(f"{account}/resume", headers=user)).status_code == 403
    assert (await client.get(account, headers=user)).status_code == 200


async def test_a_personal_account_is_invisible_to_others(accounts_api: AccountsApi) -> None:
    response = await accounts_api.client.post(
        "/v1/accounts", json=account_body(personal=True), headers=auth("alice"))
    mine = response.json()
    assert mine["personal"] is True
    assert mine["owner"] == "alice"
    account = f"/v1/accounts/{mine['id']}"

    assert (await accounts_api.client.get(account, headers=auth("alice", False))).status_code == 200
    assert (await accounts_api.client.get(account, headers=auth("bob", False))).status_code == 404
    listing = await accounts_api.client.get(
        "/v1/accounts", params={"q": mine["name"], "match": "all"}, headers=auth("bob", False))
    assert listing.json()["items"] == []
    listing = await accounts_api.client.get(
        "/v1/accounts", params={"q": mine["name"], "match": "all"}, headers=auth("alice", False))
    assert [row["id"] for row in listing.json()["items"]] == [mine["id"]]


async def test_search_by_words_with_any_or_all_newest_first_paginated(
    accounts_api: AccountsApi,
) -> None:
    tag = uuid.uuid4().hex[:8]
    a = await accounts_api.create(name=f"{tag} alpha news")
    b = await accounts_api.create(name=f"{tag} beta news")
    c = await accounts_api.create(name=f"{tag} alpha support")

    async def names(**params: object) -> list[str]:
        response = await accounts_api.client.get("/v1/accounts", params=params, headers=auth())
        assert response.status_code == 200
        return [row["name"] for row in response.json()["items"]]

    assert await names(q=f"{tag} alpha", match="all") == [c["name"], a["name"]]
    assert await names(q=f"{tag} news", match="all") == [b["name"], a["name"]]
    any_match = await names(q=f"{tag}-nothing alpha", match="any")
    assert a["name"] in any_match and c["name"] in any_match and b["name"] not in any_match
    page = await accounts_api.client.get(
        "/v1/accounts", params={"q": tag, "limit": 2, "offset": 2}, headers=auth())
    body = page.json()
    assert body["total"] == 3
    assert [row["name"] for row in body["items"]] == [a["name"]]
    assert set(body["items"][0]) >= {"id", "name", "personal", "owner", "created_by",
                                     "created_at", "paused"}


async def test_setting_a_new_default_clears_the_previous_one(accounts_api: AccountsApi) -> None:
    first = await accounts_api.create(is_default=True)
    second = await accounts_api.create()
    response = await accounts_api.client.patch(
        f"/v1/accounts/{second['id']}", json={"is_default": True}, headers=auth())
    assert response.json()["is_default"] is True
    first_now = await accounts_api.client.get(f"/v1/accounts/{first['id']}", headers=auth())
    assert first_now.json()["is_default"] is False
    defaults = await accounts_api.pool.fetchval(
        "SELECT count(*) FROM accounts WHERE is_default AND deleted_at IS NULL")
    assert defaults == 1


async def test_patch_without_a_password_keeps_the_stored_one(accounts_api: AccountsApi) -> None:
    created = await accounts_api.create(smtp_password="first-password")
    account = f"/v1/accounts/{created['id']}"
    response = await accounts_api.client.patch(account, json={"from_name": "New"},
                                               headers=auth())
    assert response.status_code == 200, response.text
    row = await repository.get(accounts_api.pool, created["id"])
    assert smtp_endpoint(row, accounts_api.box).password == "first-password"
    assert row["updated_by"] == "admin"
    assert row["updated_at"] is not None

    await accounts_api.client.patch(account, json={"smtp_password": "second-password"},
                                    headers=auth())
    row = await repository.get(accounts_api.pool, created["id"])
    assert smtp_endpoint(row, accounts_api.box).password == "second-password"
    assert "second-password" not in row["smtp_password_enc"]

    response = await accounts_api.client.patch(account, json={"smtp_password": None},
                                               headers=auth())
    assert response.status_code == 422  # smtp_auth is still on: a password is required


async def test_events_follow_each_committed_change_once(
    accounts_api: AccountsApi,
) -> None:
    queue = await events_queue(accounts_api.channel)
    created = await accounts_api.create()
    account = f"/v1/accounts/{created['id']}"
    await accounts_api.client.patch(account, json={"send_interval_ms": 7000}, headers=auth())
    await accounts_api.client.post(f"{account}/pause", headers=auth())
    await accounts_api.client.post(f"{account}/pause", headers=auth())  # no change, no event
    await accounts_api.client.post(f"{account}/resume", headers=auth())
    assert (await accounts_api.client.delete(account, headers=auth())).status_code == 204

    events = await collect_events(queue, created["id"], want=5)
    assert [e["type"] for e in events] == [
        "account.created", "account.updated", "account.paused", "account.resumed",
        "account.deleted"]
    assert events[1]["account"]["send_interval_ms"] == 7000
    assert events[2]["reason"] == "operator"
    assert len({e["event_id"] for e in events}) == 5
    assert all("password" not in str(e).replace("password_set", "") for e in events)
    assert (await accounts_api.client.get(account, headers=auth())).status_code == 404


async def test_an_event_committed_while_the_publisher_is_down_is_published_once_later(
    accounts_api: AccountsApi, amqp: AbstractRobustConnection,
) -> None:
    queue = await events_queue(accounts_api.channel)
    # As if the service died right after the commit: no relay runs to publish the event.
    await stop_relay(accounts_api.relay, accounts_api.relay_task)
    created = await accounts_api.create()
    waiting = await accounts_api.pool.fetchval(
        "SELECT count(*) FROM account_outbox WHERE body->>'account_id' = $1", created["id"])
    assert waiting == 1

    accounts_api.relay, accounts_api.relay_task = await start_relay(accounts_api.pool, amqp)
    events = await collect_events(queue, created["id"], want=1)
    assert [e["type"] for e in events] == ["account.created"]

    async def outbox_empty() -> bool:  # the relay deletes the row right after the confirm
        return await accounts_api.pool.fetchval(
            "SELECT count(*) = 0 FROM account_outbox WHERE body->>'account_id' = $1",
            created["id"])

    await eventually(outbox_empty, timeout=10)
    # Published once: nothing more arrives once the row is gone.
    assert await collect_events(queue, created["id"], want=0, timeout=1) == []


async def test_delete_refuses_while_messages_wait_unless_forced(
    accounts_api: AccountsApi,
) -> None:
    created = await accounts_api.create()
    account = f"/v1/accounts/{created['id']}"
    send = await accounts_api.channel.get_exchange(TOPOLOGY.send_exchange)
    await publish(send, created["id"], make_message(b'{"job": 1}', message_id="job-1"))
    dead = await accounts_api.channel.declare_queue(TOPOLOGY.dead_queue, passive=True)
    await dead.purge()

    response = await accounts_api.client.delete(account, headers=auth())
    assert response.status_code == 409
    assert "1 messages" in response.text

    response = await accounts_api.client.delete(account, params={"force": "true"}, headers=auth())
    assert response.status_code == 204
    [moved] = await receive(dead)
    assert moved.body == b'{"job": 1}'
    assert moved.headers["x-reason"] == "account_deleted"
    assert (await accounts_api.client.get(account, headers=auth())).status_code == 404


async def test_passwords_never_appear_in_responses_logs_or_events(
    accounts_api: AccountsApi, capsys: pytest.CaptureFixture[str],
) -> None:
    canary = "canary-" + uuid.uuid4().hex
    queue = await events_queue(accounts_api.channel)
    created = await accounts_api.create(smtp_password=canary, pop_before_smtp=True,
                                        pop_host="pop.example.com", pop_port=995,
                                        pop_username="u", pop_password=canary)
    account = f"/v1/accounts/{created['id']}"
    bodies = [str(created)]
    for response in (
        await accounts_api.client.get(account, headers=auth()),
        await accounts_api.client.patch(account, json={"smtp_password": canary}, headers=auth()),
        await accounts_api.client.get("/v1/accounts", headers=auth()),
        await accounts_api.client.post("/v1/accounts", json=account_body(
            smtp_password=canary, smtp_port=0), headers=auth()),
        await accounts_api.client.post("/v1/accounts", json=account_body(
            smtp_password=canary, unknown=canary), headers=auth()),
    ):
        bodies.append(response.text)
    events = await collect_events(queue, created["id"], want=2)
    assert len(events) == 2
    captured = capsys.readouterr()
    for text in [*bodies, str(events), captured.out, captured.err]:
        assert canary not in text


async def test_key_rotation_re_encrypts_and_an_unknown_key_gives_a_clear_error(
    accounts_api: AccountsApi, postgres_dsn: str,
) -> None:
    created = await accounts_api.create(smtp_password="rotate-me")
    rotated = ConfigSettings(fernet_keys=f"{NEXT_KEY},{KEY}", postgres_dsn=postgres_dsn)
    assert await rotate_keys(rotated) >= 1
    try:
        row = await repository.get(accounts_api.pool, created["id"])
        assert smtp_endpoint(row, SecretBox([NEXT_KEY])).password == "rotate-me"
        with pytest.raises(UndecryptableSecret, match=created["id"]):
            smtp_endpoint(row, SecretBox([KEY]))
        response = await accounts_api.client.post(
            f"/v1/accounts/{created['id']}/test-mail", json={"to": "a@example.com"},
            headers=auth())
        assert response.status_code == 500
        assert created["id"] in response.json()["detail"]
    finally:  # back to the key the other tests use
        back = ConfigSettings(fernet_keys=f"{KEY},{NEXT_KEY}", postgres_dsn=postgres_dsn)
        await rotate_keys(back)
    row = await repository.get(accounts_api.pool, created["id"])
    assert smtp_endpoint(row, SecretBox([KEY])).password == "rotate-me"


async def test_test_mail_of_a_saved_account_reaches_the_server_and_hides_the_password(
    accounts_api: AccountsApi,
) -> None:
    canary = "canary-" + uuid.uuid4().hex
    async with auth_server({"news@shop.example.com": canary}) as server:
        created = await accounts_api.create(
            smtp_host=server.host, smtp_port=server.port, tls="none", smtp_password=canary,
            local_hostname="crm.shop.example.com")
        response = await accounts_api.client.post(
            f"/v1/accounts/{created['id']}/test-mail", json={"to": "customer@example.com"},
            headers=auth())
        assert response.status_code == 200
        report = response.json()
        assert report["ok"] is True, report
        assert report["message"] == "Mail was sent"
        [received] = server.messages
        assert received.rcpt_tos == ["customer@example.com"]
        assert canary not in response.text


async def test_a_failing_test_mail_names_the_stage_the_servers_words_and_a_hint(
    accounts_api: AccountsApi,
) -> None:
    async with auth_server({"news@shop.example.com": "the-right-one"}) as server:
        body = account_body(smtp_host=server.host, smtp_port=server.port, tls="none",
                            smtp_password="a-wrong-one", to="customer@example.com")
        english = await accounts_api.client.post(
            "/v1/accounts/test-mail", json=body, headers=auth())
        japanese = await accounts_api.client.post(
            "/v1/accounts/test-mail", json=body,
            headers={**auth(), "Accept-Language": "ja,en;q=0.5"})
    for response in (english, japanese):
        assert response.status_code == 200
        failure = response.json()["failure"]
        assert failure["stage"] == "auth"
        assert failure["smtp_code"] == 535
        assert failure["smtp_message"] == "5.7.8 Username and Password not accepted"
        assert failure["exception"] == "SMTPAuthenticationError"
        assert "smtp_password" in failure["hint"]
        assert "a-wrong-one" not in response.text
    assert english.json()["failure"]["hint"] != japanese.json()["failure"]["hint"]
    # Nothing was saved by testing.
    listing = await accounts_api.client.get(
        "/v1/accounts", params={"q": body["name"], "match": "all"}, headers=auth())
    assert listing.json()["total"] == 0
