"""What a bounce's status and words mean for its recipient: the sender's own problems are
never read as the recipient's (no suppression), and the most specific status wins."""

import pytest

from services.sender.bounces.kind import classify, most_specific


@pytest.mark.parametrize(("status", "diagnostic"), [
    ("5.1.8", "553 5.1.8 <news@example.com>... Domain of sender address news@example.com "
              "does not exist"),
    ("5.1.7", "553 5.1.7 The sender address <news@example> is not a valid address"),
    ("5.1.1", "554 5.1.1 <news@example.com>: Sender address rejected: Domain not found"),
    ("5.0.0", "550 Sender address rejected: undeliverable address"),
    ("5.1.0", "SMTP error from remote mail server after MAIL FROM:<news@example.com>: "
              "553 5.1.0 example.com does not exist"),
    ("4.7.28", "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail"),
    ("5.4.1", "550 5.4.1 Our system has detected that this message is likely suspicious due "
              "to the very low reputation of the sending IP address"),
    ("4.2.1", "450 4.2.1 The user you are trying to contact is receiving mail at a rate that "
              "prevents additional messages from being delivered"),
    ("5.5.3", "452 5.5.3 Too many recipients this hour"),
    ("5.0.0", "550 5.7.1 Client host rejected: cannot find your reverse hostname"),
])
def test_the_senders_own_problems_are_policy_never_the_recipients(status: str,
                                                                   diagnostic: str) -> None:
    assert classify(status, diagnostic) == "policy"


@pytest.mark.parametrize(("status", "diagnostic", "kind"), [
    ("5.1.1", "550 5.1.1 <r@example.org>: Recipient address rejected: User unknown", "hard"),
    ("5.0.0", "550 5.1.1 <r@example.org>... User unknown", "hard"),
    ("5.2.2", "552 5.2.2 Mailbox full", "soft"),
    ("4.1.1", "450 4.1.1 <r@example.org>: Recipient address rejected: User unknown", "soft"),
])
def test_the_recipients_own_failures_keep_their_kind(status: str, diagnostic: str,
                                                     kind: str) -> None:
    assert classify(status, diagnostic) == kind


def test_a_generic_status_gives_way_to_the_specific_one_in_the_diagnostic() -> None:
    assert most_specific("5.0.0", "550 5.7.1 Service unavailable") == "5.7.1"
    assert most_specific("5.1.1", "550 5.7.1 whatever") == "5.1.1"  # specific already
    assert most_specific(None, "550 5.2.2 Mailbox full") == "5.2.2"
    assert most_specific("5.0.0", "no code here") == "5.0.0"
