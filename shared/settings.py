"""Settings common to every service.

Each service subclasses `ServiceSettings` and builds it in its `main()`, never at import
time, so that tests and tools can build their own.
"""

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAIL_", extra="ignore")

    amqp_url: SecretStr = Field(
        SecretStr("amqp://mail:mail@127.0.0.1:5672/mail"),
        description="RabbitMQ connection URL (vhost included); several, comma-separated, for "
        "the nodes of a cluster (a lost connection reconnects to the next).",
    )
    postgres_dsn: SecretStr = Field(
        SecretStr("postgresql://mail:mail@127.0.0.1:5432/mail"),
        description="PostgreSQL connection string.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level of log lines written."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="`auto`: console renderer on a TTY, JSON lines otherwise."
    )
    http_host: str = Field("0.0.0.0", description="Address the HTTP server listens on.")  # noqa: S104
    http_port: int = Field(
        8080, ge=1, le=65535, description="Port of /healthz, /readyz, /metrics (and the API)."
    )
    db_pool_max: int = Field(10, ge=1, description="Largest number of PostgreSQL connections.")
    db_pooling: Literal["session", "transaction"] = Field(
        "session", description="`transaction` when PostgreSQL is reached through PgBouncer "
        "in transaction pooling mode (no prepared statement kept across transactions); "
        "`session` for PostgreSQL itself or a pooler in session mode.")
    shutdown_grace_s: float = Field(
        20.0, gt=0, description="How long a service waits for work in hand on SIGTERM."
    )


class ApiSettings(ServiceSettings):
    """Settings of a service with an authenticated HTTP API."""

    jwt_algorithm: Literal["HS256", "RS256"] = Field(
        "HS256", description="The only JWT algorithm accepted."
    )
    jwt_secret: SecretStr | None = Field(None, description="HS256 shared secret.")
    jwt_public_key: str | None = Field(None, description="RS256 public key (PEM).")

    def jwt_key(self) -> str:
        if self.jwt_algorithm == "HS256":
            return self.jwt_secret.get_secret_value() if self.jwt_secret else ""
        return self.jwt_public_key or ""
