"""The accounts API's request and response bodies.

Requests forbid unknown fields, so `id`, `created_by` or `owner` cannot be mass-assigned.
Per-field checks live here; checks across fields are in `rules.py`.
"""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
)

from shared.addresses import check_address, check_host, check_hostname
from shared.messages import AccountPublic, Tls

MAX_INTERVAL_MS = 1_500_000  # under RabbitMQ's 30-minute consumer timeout, with margin

Text = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\r\n\x00]*$")]
Address = Annotated[str, StringConstraints(max_length=320), AfterValidator(check_address)]
Host = Annotated[str, AfterValidator(check_host)]
HostName = Annotated[str, AfterValidator(check_hostname)]
Port = Annotated[int, Field(ge=1, le=65535)]
Password = Annotated[SecretStr, Field(min_length=1, max_length=1024)]
Interval = Annotated[int, Field(ge=0, le=MAX_INTERVAL_MS)]
Quota = Annotated[int, Field(ge=1, le=100_000_000)]
AccountRef = Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                                          r"[0-9a-f]{12}$")]
# An address, or "@domain" for every address of a domain.
AllowedFrom = Annotated[str, Field(min_length=3, max_length=254,
                                   pattern=r"^(?:[^@\s,<>]+)?@[^@\s,<>]+\.[^@\s,<>]+$")]
Standbys = Annotated[list[AccountRef], Field(max_length=5)]
BounceProtocol = Literal["imap", "pop3"]
PollSeconds = Annotated[int, Field(ge=10, le=86_400)]
AllowedFroms = Annotated[list[AllowedFrom], Field(max_length=50)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountFields(Strict):
    """Every field of the seed's registration form."""

    name: Text
    personal: bool = False
    from_address: Address
    from_name: Text | None = None
    reply_to: Address | None = None
    smtp_host: Host
    smtp_port: Port
    smtp_auth: bool = False
    smtp_username: Text | None = None
    smtp_password: Password | None = None
    pop_before_smtp: bool = False
    pop_host: Host | None = None
    pop_port: Port | None = None
    pop_username: Text | None = None
    pop_password: Password | None = None
    tls: Tls = "starttls"
    local_hostname: HostName | None = None
    send_interval_ms: Interval = 0
    # Contract §6: messages over a rolling window; None: no limit.
    quota_per_minute: Quota | None = None
    quota_per_hour: Quota | None = None
    quota_per_day: Quota | None = None
    # Contract §6: fail-over, in order, while this account is paused (quota, auth, tls,
    # connect); the From addresses or @domains this account may send as when it stands in.
    standby_account_ids: Standbys = Field(default_factory=list)
    allowed_from: AllowedFroms = Field(default_factory=list)
    # Contract §6: the bounce mailbox the sender reads (IMAP or POP3, its own login), and
    # the VERP base address of the envelope sender.
    bounce_protocol: BounceProtocol | None = None
    bounce_host: Host | None = None
    bounce_port: Port | None = None
    bounce_tls: Tls = "ssl"
    bounce_username: Text | None = None
    bounce_password: Password | None = None
    bounce_address: Address | None = None
    bounce_poll_s: PollSeconds = 300
    is_default: bool = False


class AccountPatch(Strict):
    """Only the fields sent change; a password left out keeps the stored one."""

    name: Text | None = None
    personal: bool | None = None
    from_address: Address | None = None
    from_name: Text | None = None
    reply_to: Address | None = None
    smtp_host: Host | None = None
    smtp_port: Port | None = None
    smtp_auth: bool | None = None
    smtp_username: Text | None = None
    smtp_password: Password | None = None
    pop_before_smtp: bool | None = None
    pop_host: Host | None = None
    pop_port: Port | None = None
    pop_username: Text | None = None
    pop_password: Password | None = None
    tls: Tls | None = None
    local_hostname: HostName | None = None
    send_interval_ms: Interval | None = None
    quota_per_minute: Quota | None = None
    quota_per_hour: Quota | None = None
    quota_per_day: Quota | None = None
    standby_account_ids: Standbys | None = None
    allowed_from: AllowedFroms | None = None
    bounce_protocol: BounceProtocol | None = None
    bounce_host: Host | None = None
    bounce_port: Port | None = None
    bounce_tls: Tls | None = None
    bounce_username: Text | None = None
    bounce_password: Password | None = None
    bounce_address: Address | None = None
    bounce_poll_s: PollSeconds | None = None
    is_default: bool | None = None


class TestMailTo(Strict):
    to: Address


class UnsavedTestMail(AccountFields):
    to: Address


class AccountOut(AccountPublic):
    smtp_password_set: bool
    pop_password_set: bool
    bounce_password_set: bool = False
    warnings: list[str] = Field(default_factory=list)
    # Per window with a quota (GET only): the messages the servers accepted in it now.
    quota_used: dict[str, int] | None = None


class AccountRow(BaseModel):
    """One row of the list: the seed's columns, plus whether the account is paused."""

    id: str
    name: str
    personal: bool
    owner: str | None
    created_by: str
    created_at: datetime
    paused: bool
    is_default: bool


class AccountPage(BaseModel):
    items: list[AccountRow]
    total: int
    limit: int
    offset: int


Match = Literal["any", "all"]
