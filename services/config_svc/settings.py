from pydantic import Field, SecretStr

from shared.crypto import parse_keys
from shared.settings import ApiSettings


class ConfigSettings(ApiSettings):
    http_port: int = Field(8080, ge=1, le=65535, description="Port of the accounts API.")
    fernet_keys: SecretStr = Field(
        SecretStr(""), description="Comma-separated Fernet keys, newest first."
    )
    smtp_ca_file: str | None = Field(
        None, description="Extra CA certificates (PEM) trusted for SMTP and POP TLS."
    )
    test_mail_timeout_s: float = Field(10.0, gt=0, description="Timeout of each test-mail stage.")
    outbox_poll_s: float = Field(
        1.0, gt=0, description="How often unpublished account events are looked for."
    )
    max_body_bytes: int = Field(65536, ge=1024, description="Largest accepted request body.")
    dispatcher_url: str = Field(
        "http://127.0.0.1:8081", description="The dispatcher's API, for the screens' "
        "deliveries (the signed-in user's token is passed on).")

    def encryption_keys(self) -> list[str]:
        return parse_keys(self.fernet_keys.get_secret_value())
