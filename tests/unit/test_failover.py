"""Which standby may send a paused account's jobs."""

from services.sender.consumers.failover import may_send_as, standby_for


def account(**changes: object) -> dict:
    row = {"id": "a", "from_address": "news@shop.example.com", "personal": False,
           "owner": None, "paused": True, "paused_by": "sender", "paused_reason": "quota",
           "standby_account_ids": ["b", "c"], "deleted_at": None, "allowed_from": []}
    row.update(changes)
    return row


def standby(**changes: object) -> dict:
    return account(**{"paused": False, "paused_reason": None, "paused_by": None,
                      "standby_account_ids": [], **changes})


def test_the_first_usable_standby_sends() -> None:
    rows = {"b": standby(id="b", paused=True, paused_reason="auth"), "c": standby(id="c")}
    assert standby_for(account(), rows.get) == "c"


def test_only_pauses_that_are_not_the_recipients_fail_over() -> None:
    rows = {"b": standby(id="b")}
    for reason in ("quota", "auth", "tls", "connect", "pop"):
        assert standby_for(account(paused_reason=reason), rows.get) == "b"
    for reason in (None, "sender_refused", "account", "secret"):
        assert standby_for(account(paused_reason=reason), rows.get) is None
    assert standby_for(account(paused_by="operator"), rows.get) is None


def test_the_from_rule() -> None:
    assert may_send_as(standby(), "news@shop.example.com")
    assert may_send_as(standby(from_address="x@other.example", allowed_from=["@Shop.Example.com"]),
                       "news@shop.example.com")
    assert may_send_as(standby(from_address="x@other.example",
                               allowed_from=["news@shop.example.com"]), "NEWS@shop.example.com")
    assert not may_send_as(standby(from_address="x@other.example"), "news@shop.example.com")
    assert not may_send_as(standby(from_address="x@other.example",
                                   allowed_from=["@example.com"]), "news@shop.example.com")


def test_a_personal_account_fails_over_only_to_its_owners_accounts() -> None:
    home = account(personal=True, owner="tanaka")
    assert standby_for(home, {"b": standby(id="b", owner="suzuki"),
                              "c": standby(id="c", owner="tanaka")}.get) == "c"


def test_a_deleted_or_missing_standby_is_skipped() -> None:
    assert standby_for(account(), {"b": standby(id="b", deleted_at="2026-12-01")}.get) is None
