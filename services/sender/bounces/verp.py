"""VERP envelope senders: `local+<token>@domain` of an account's `bounce_address`, so that a
bounce finds its recipient by the address it comes back to, even without the original's
headers.

The token is 20 bytes in base32 (32 characters, no padding, so one spelling a token;
case-insensitive as some MTAs lower an address): the delivery's `ref` (6 bytes) and the
recipient's index (3 bytes), then 11 bytes of HMAC-SHA256 over them. No address is in it,
and without the key no token names another recipient's row. The key comes from the Fernet
keys (newest signs, every one verifies), so a rotation leaves the bounces of mail sent before
it matchable.
"""

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable

_CONTEXT = b"mail-verp-v1"
_REF_BYTES, _INDEX_BYTES, _MAC_BYTES = 6, 3, 11
_TOKEN = re.compile(r"^[a-z2-7]{32}$")


class Verp:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._keys = [hmac.new(s.encode(), _CONTEXT, hashlib.sha256).digest() for s in secrets]

    @property
    def enabled(self) -> bool:
        """Without a key (no MAIL_FERNET_KEYS) there is no VERP: the plain address is used."""
        return bool(self._keys)

    def address(self, base: str, ref: int, index: int) -> str:
        local, _, domain = base.rpartition("@")
        return f"{local}+{self.token(ref, index)}@{domain}"

    def token(self, ref: int, index: int) -> str:
        body = ref.to_bytes(_REF_BYTES, "big") + index.to_bytes(_INDEX_BYTES, "big")
        raw = body + self._mac(self._keys[0], body)
        return base64.b32encode(raw).decode("ascii").lower()

    def find(self, addresses: Iterable[str], bases: Iterable[str]) -> tuple[int, int] | None:
        """(ref, index) of the first address that is `local+<valid token>@domain` of a base."""
        wanted = {_split(base) for base in bases}
        if not self._keys:
            return None
        for address in addresses:
            local, _, domain = address.strip().rpartition("@")
            head, plus, token = local.rpartition("+")
            if plus and (head.lower(), domain.lower()) in wanted:
                found = self._verify(token.lower())
                if found is not None:
                    return found
        return None

    def _verify(self, token: str) -> tuple[int, int] | None:
        if not _TOKEN.match(token):
            return None
        try:
            raw = base64.b32decode(token.upper())
        except binascii.Error:
            return None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not any(hmac.compare_digest(mac, self._mac(key, body)) for key in self._keys):
            return None
        return (int.from_bytes(body[:_REF_BYTES], "big"),
                int.from_bytes(body[_REF_BYTES:], "big"))

    @staticmethod
    def _mac(key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()[:_MAC_BYTES]


def _split(base: str) -> tuple[str, str]:
    local, _, domain = base.rpartition("@")
    return local.lower(), domain.lower()
