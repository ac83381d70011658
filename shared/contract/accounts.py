"""An account as other systems see it, in the account events: never a secret."""

from datetime import datetime
from typing import Literal

from pydantic import Field

from shared.contract.base import Model, Tls


class AccountPublic(Model):
    id: str
    name: str
    personal: bool
    owner: str | None
    from_address: str
    from_name: str | None
    reply_to: str | None
    smtp_host: str
    smtp_port: int
    smtp_auth: bool
    smtp_username: str | None
    pop_before_smtp: bool
    pop_host: str | None
    pop_port: int | None
    pop_username: str | None
    tls: Tls
    local_hostname: str | None
    send_interval_ms: int
    quota_per_minute: int | None = None
    quota_per_hour: int | None = None
    quota_per_day: int | None = None
    standby_account_ids: list[str] = Field(default_factory=list)
    allowed_from: list[str] = Field(default_factory=list)
    bounce_protocol: Literal["imap", "pop3"] | None = None
    bounce_host: str | None = None
    bounce_port: int | None = None
    bounce_tls: Tls = "ssl"
    bounce_username: str | None = None
    bounce_address: str | None = None
    bounce_poll_s: int = 300
    is_default: bool
    paused: bool
    created_by: str
    created_at: datetime
    updated_by: str | None
    updated_at: datetime | None
