"""What the worker stores of a server's words and an account's addresses."""

import orjson

from services.sender.delivery.compose import account_address_problem
from services.sender.delivery.text import clean_text


def test_a_reply_with_bytes_that_are_not_utf8_and_a_nul_can_be_stored() -> None:
    # aiosmtplib decodes with surrogateescape: a Latin-1 byte arrives as a lone surrogate.
    reply = b"2.0.0 Ok: queued as caf\xe9\x00".decode("utf-8", "surrogateescape")
    cleaned = clean_text(reply)
    assert cleaned == "2.0.0 Ok: queued as caf?"
    cleaned.encode("utf-8")  # what asyncpg does with it
    assert orjson.loads(orjson.dumps(cleaned)) == cleaned
    assert clean_text("250 OK") == "250 OK"


def test_an_account_whose_from_or_reply_to_cannot_be_written_is_the_accounts_fault() -> None:
    assert account_address_problem("news@shop.example.com", None) is None
    assert account_address_problem("news@shop.example.com", "help@shop.example.com") is None
    assert account_address_problem("Shop <news@shop.example.com>", None).startswith(
        "from_address:")
    assert account_address_problem("news@shop.example.com", "a@b, c@d").startswith("reply_to:")
