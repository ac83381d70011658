"""What a bounce says of its recipient: `hard` (the address does not exist or is disabled),
`soft` (it may work later), `policy` (the account's or the content's problem: blocklists,
reputation, authentication; never the address's), or `complaint` (a feedback report).

The enhanced status code decides first, then the diagnostic's words: a provider that blocks
for reputation often writes 5.0.0 or even 5.1.x with "blocked" in its text, and suppressing
on such a block would wipe valid addresses; a text that says the user does not exist is hard
whatever its code.
"""

import re
from typing import Literal

Kind = Literal["hard", "soft", "policy", "complaint"]

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# The account's or the content's problem: never the address's.
_POLICY_WORDS = re.compile(
    r"block(ed|list)|black ?list|spamhaus|barracuda|\bspam\b|reputation|\bpolicy\b|"
    r"not allowed|rejected for policy|\bdmarc\b|\bspf\b|\bdkim\b|authenticat|"
    r"too many (messages|connections)|rate limit|temporarily deferred|"
    r"迷惑メール|スパム|拒否されました", re.IGNORECASE)
# The address itself: it does not exist, or is disabled.
_HARD_WORDS = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient|address)|"
    r"does not exist|doesn'?t exist|not exist|mailbox (is )?(unavailable|disabled|not found)|"
    r"account (is )?(disabled|inactive|suspended|deleted)|invalid (recipient|mailbox|address)|"
    r"recipient (address )?rejected: (user unknown|undeliverable)|address rejected|"
    r"unrouteable address|no mailbox here|unknown recipient|recipient not found|"
    r"宛先不明|存在しません|アカウントが無効", re.IGNORECASE)
# The sender's side refused (its address, its domain, its host, its rate), whatever the class
# of the code: the recipient's address says nothing of it. Checked before the address's own
# words, which "Sender address rejected" or "sender domain does not exist" would match.
_SENDER_WORDS = re.compile(
    r"sender (address )?(rejected|refused|denied|verify failed)|"
    r"(domain of )?sender('s)? (address|domain)\b.*(does not exist|not found|unknown)|"
    r"after mail from|\bmail from\b.*(rejected|refused|denied|not exist)|"
    r"reverse (dns|lookup)|\bptr\b|cannot find your (reverse )?hostname|"
    r"client host rejected|"
    r"receiving mail at a rate|too many (recipients|messages)|rate (limit|that prevents)",
    re.IGNORECASE)
_SOFT_WORDS = re.compile(
    r"mailbox (is )?full|over ?quota|quota exceeded|insufficient (disk )?space|"
    r"try again later|temporar(il)?y|timed? ?out|connection refused|容量", re.IGNORECASE)


def status_of(text: str) -> str | None:
    """The first enhanced status code (RFC 3463) in `text`, e.g. '5.1.1'."""
    found = _STATUS.search(text or "")
    return ".".join(found.groups()) if found else None


def most_specific(status: str | None, text: str) -> str | None:
    """The status, unless it is a generic X.0.0 and the diagnostic names a specific one (a
    `Status: 5.0.0` whose server wrote 5.7.1)."""
    given = status_of(status or "")
    written = status_of(text)
    if given is None or (given.endswith(".0.0") and written and not written.endswith(".0.0")):
        return written or given
    return given


def classify(status: str | None, diagnostic: str, action: str | None = None) -> Kind:
    text = diagnostic or ""
    code = most_specific(status, text)
    klass, subject, detail = (code.split(".") if code else (None, None, None))
    if subject == "7":
        return "policy"  # X.7.x: security and policy, whatever the words
    if subject == "1" and detail in ("7", "8"):
        return "policy"  # X.1.7, X.1.8: the sender's address or its domain, not the recipient's
    if _SENDER_WORDS.search(text):
        return "policy"
    if _POLICY_WORDS.search(text) and not (subject == "1" and detail == "1"
                                           and _HARD_WORDS.search(text)):
        return "policy"
    if (action or "").lower() == "delayed" or klass == "4":
        return "soft"
    if subject == "2" and detail == "2":
        return "soft"  # X.2.2: mailbox full
    if subject == "1" and detail in ("1", "2", "3", "6", "10"):
        return "hard"  # bad mailbox, bad domain, bad syntax, moved, null MX
    if subject == "2" and detail == "1":
        return "hard"  # X.2.1: mailbox disabled
    if _HARD_WORDS.search(text):
        return "hard"
    if subject == "6" or (subject == "3" and detail == "4"):
        return "policy"  # the content (X.6.x), or the message too big (X.3.4)
    return "soft"  # not known to be the address's: never suppressed on one
