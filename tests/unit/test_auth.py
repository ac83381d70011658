import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.auth import InvalidToken, TokenVerifier, issue_token

SECRET = "unit-test-secret-of-32-bytes-min!"


def rsa_pair() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def test_an_hs256_token_names_its_user_and_roles() -> None:
    user = TokenVerifier("HS256", SECRET).verify(issue_token(SECRET, "tanaka", ["mail-admin"]))
    assert user.sub == "tanaka"
    assert user.is_admin


def test_rs256_tokens_are_checked_with_the_public_key() -> None:
    private, public = rsa_pair()
    claims = {"sub": "suzuki", "roles": [], "exp": int(time.time()) + 60}
    user = TokenVerifier("RS256", public).verify(jwt.encode(claims, private, algorithm="RS256"))
    assert user.sub == "suzuki"
    assert not user.is_admin


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_an_hs256_token_signed_with_the_public_key_is_refused_by_an_rs256_verifier() -> None:
    _private, public = rsa_pair()
    claims = {"sub": "mallory", "roles": ["mail-admin"], "exp": int(time.time()) + 60}
    # The classic algorithm confusion: the public key used as an HMAC secret.
    signing_input = (_b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "."
                     + _b64(json.dumps(claims).encode()))
    signature = hmac.new(public.encode(), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{_b64(signature)}"
    with pytest.raises(InvalidToken):
        TokenVerifier("RS256", public).verify(forged)


def test_short_hs256_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TokenVerifier("HS256", "short")
