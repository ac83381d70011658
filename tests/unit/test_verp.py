import string

from services.sender.bounces.verp import Verp

BASE = "bounces@shop.example.com"


def test_a_token_names_its_recipient_and_holds_no_address() -> None:
    verp = Verp(["key-new", "key-old"])
    address = verp.address(BASE, 123_456_789, 99_999)
    local, _, domain = address.partition("@")
    assert domain == "shop.example.com"
    assert local.startswith("bounces+") and len(local) <= 64
    assert "shop" not in local.partition("+")[2]
    assert verp.find([address], [BASE]) == (123_456_789, 99_999)


def test_an_mta_that_changes_the_case_still_matches() -> None:
    verp = Verp(["key"])
    address = verp.address(BASE, 7, 3)
    assert verp.find([address.upper()], ["Bounces@Shop.Example.com"]) == (7, 3)


def test_no_change_of_one_character_names_a_row() -> None:
    verp = Verp(["key"])
    token = verp.token(42, 1)
    forged = [token[:i] + c + token[i + 1:] for i in range(len(token))
              for c in string.ascii_lowercase + "234567" if c != token[i]]
    assert not any(verp.find([f"bounces+{f}@shop.example.com"], [BASE]) for f in forged)


def test_another_key_or_another_base_matches_nothing() -> None:
    address = Verp(["key"]).address(BASE, 42, 1)
    assert Verp(["other"]).find([address], [BASE]) is None
    assert Verp(["key"]).find([address], ["returns@shop.example.com"]) is None
    assert Verp(["key"]).find(["bounces@shop.example.com", "x+y@shop.example.com"],
                              [BASE]) is None


def test_after_a_key_rotation_older_tokens_still_match() -> None:
    address = Verp(["old"]).address(BASE, 42, 1)
    assert Verp(["new", "old"]).find([address], [BASE]) == (42, 1)
    assert Verp(["new", "old"]).address(BASE, 42, 1) != address  # the newest signs
