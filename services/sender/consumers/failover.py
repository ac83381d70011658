"""Which standby account may send a paused account's waiting jobs: pure rules.

An account paused for a reason that is not its recipients' (its provider's quota, a refused
login, TLS, an unreachable server) names standby accounts, in order. The first usable one
sends its jobs: live and running itself, the same owner's when the account is personal, and
allowed to send as the account's From (its own `from_address`, or an address or `@domain` of
its `allowed_from`); otherwise the jobs wait for the account itself.
"""

from collections.abc import Callable, Mapping
from typing import Any

# Pauses that fail over; an operator's pause and the account's own broken settings do not
# (`sender_refused`, `account`, `secret`: the same job would fail the same way elsewhere, or
# the operator wants it stopped).
FAILOVER_REASONS = frozenset({"quota", "auth", "tls", "connect", "pop"})


def may_send_as(standby: Mapping[str, Any], from_address: str) -> bool:
    wanted = from_address.lower()
    if standby["from_address"].lower() == wanted:
        return True
    domain = "@" + wanted.rpartition("@")[2]
    return any(allowed.lower() in (wanted, domain) for allowed in standby["allowed_from"] or [])


def usable(account: Mapping[str, Any], standby: Mapping[str, Any] | None) -> bool:
    if standby is None or standby["deleted_at"] is not None:
        return False
    if standby["paused"] or standby["paused_reason"] is not None:
        return False
    if account["personal"] and standby["owner"] != account["owner"]:
        return False
    return may_send_as(standby, account["from_address"])


def standby_for(account: Mapping[str, Any],
                lookup: Callable[[str], Mapping[str, Any] | None]) -> str | None:
    """The standby that sends for `account` now, or None (it is not paused for a reason that
    fails over, or no standby is usable)."""
    if account["paused_reason"] not in FAILOVER_REASONS:
        return None
    if account["paused"] and account.get("paused_by") == "operator":
        return None
    for standby_id in account["standby_account_ids"] or []:
        if usable(account, lookup(standby_id)):
            return standby_id
    return None
