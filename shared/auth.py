"""Bearer JWTs for the HTTP APIs: HS256 with a shared secret, or RS256 with a public key.

The accepted algorithm is fixed by settings, never taken from the token, so `alg: none` and
algorithm confusion are refused; `exp` and `sub` are required.
"""

import time
from dataclasses import dataclass

import jwt

ADMIN_ROLE = "mail-admin"


@dataclass(frozen=True)
class User:
    sub: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


class InvalidToken(Exception):
    pass


class TokenVerifier:
    def __init__(self, algorithm: str, key: str, leeway_s: float = 30) -> None:
        if algorithm not in ("HS256", "RS256"):
            raise ValueError(f"unsupported JWT algorithm {algorithm!r}: HS256 or RS256")
        if not key:
            raise ValueError("a JWT secret (HS256) or public key (RS256) is required")
        if algorithm == "HS256" and len(key.encode()) < 32:
            raise ValueError("the HS256 secret must be at least 32 bytes (RFC 7518 3.2)")
        self._algorithm = algorithm
        self._key = key
        self._leeway = leeway_s

    def verify(self, token: str) -> User:
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[self._algorithm], leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        roles = claims.get("roles", [])
        if not isinstance(claims["sub"], str) or not isinstance(roles, list):
            raise InvalidToken("claims `sub` (string) and `roles` (list) expected")
        return User(sub=claims["sub"], roles=frozenset(str(role) for role in roles))


def issue_token(secret: str, sub: str, roles: list[str], ttl_s: int = 12 * 3600) -> str:
    """An HS256 token for local use and tests."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "roles": roles, "iat": now, "exp": now + ttl_s}, secret,
                      algorithm="HS256")
