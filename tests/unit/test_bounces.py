"""Bounces read and classified: each fixture of the corpus as its fixture says."""

import pytest

from services.sender.bounces.dsn import parse
from services.sender.bounces.kind import classify
from tests.unit.bounce_corpus import CORPUS


@pytest.mark.parametrize(("name", "raw", "report", "recipient", "kind", "status", "message_id"),
                         CORPUS, ids=[row[0] for row in CORPUS])
def test_each_bounce_of_the_corpus_is_read_as_it_says(
    name: str, raw: bytes, report: str, recipient: str | None, kind: str | None,
    status: str | None, message_id: str | None,
) -> None:
    found = parse(raw)
    assert found.kind == report
    assert found.message_id == message_id
    if recipient is None:
        assert found.recipients == []
        return
    [bounced] = found.recipients
    assert (bounced.recipient, bounced.kind, bounced.status) == (recipient, kind, status)
    if bounced.action == "failed":
        assert bounced.diagnostic  # verbatim, never empty for a failure
    assert found.to  # where it came back to (a VERP address, when the account has one)


def test_a_policy_block_never_counts_as_the_addresses_fault() -> None:
    for text in ("550 5.7.1 Service unavailable; client [198.51.100.7] blocked using "
                 "Spamhaus", "554 5.7.9 Message not accepted for policy reasons",
                 "550 5.1.1 blocked: your IP has a poor reputation"):
        assert classify(None, text) == "policy", text


def test_a_user_unknown_is_hard_even_with_a_generic_code_and_a_full_mailbox_soft() -> None:
    assert classify("5.0.0", "550 No such user here") == "hard"
    assert classify(None, "550 5.1.1 <a@example.com>: Recipient address rejected: "
                          "User unknown; blocked list lookup skipped") == "hard"
    assert classify("5.2.2", "552 Mailbox full") == "soft"
    assert classify("4.2.2", "452 over quota") == "soft"
    assert classify(None, "something we do not know") == "soft"
