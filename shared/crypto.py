"""Account passwords encrypted at rest with MultiFernet.

The first key encrypts; every key decrypts, so keys can be rotated: add a new key in front,
re-encrypt every row (`python -m services.config_svc rotate-keys`), then drop the old key.
"""

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shared.logging import register_secret


class UndecryptableSecret(Exception):
    """No configured key decrypts a stored secret: the keys changed without a rotation."""


class SecretBox:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required (MAIL_FERNET_KEYS)")
        for key in keys:
            register_secret(key)
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str, *, account_id: str, field: str) -> str:
        try:
            plaintext = self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise UndecryptableSecret(
                f"account {account_id}: the stored {field} cannot be decrypted with any "
                "configured key (MAIL_FERNET_KEYS changed without a key rotation?)"
            ) from None
        register_secret(plaintext)
        return plaintext

    def rotate(self, token: str, *, account_id: str, field: str) -> str:
        """The same secret encrypted with the newest key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise UndecryptableSecret(
                f"account {account_id}: the stored {field} cannot be decrypted with any "
                "configured key, so it cannot be rotated"
            ) from None


def parse_keys(value: str) -> list[str]:
    """`MAIL_FERNET_KEYS` is a comma-separated list, newest first."""
    return [key.strip() for key in value.split(",") if key.strip()]
