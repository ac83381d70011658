import os
import socket

from pydantic import Field, SecretStr

from shared.crypto import parse_keys
from shared.settings import ServiceSettings


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class SenderSettings(ServiceSettings):
    http_port: int = Field(8082, ge=1, le=65535, description="Port of the sender's probes.")
    # Each mail takes a connection twice (row, outcome), and the outbox relay one: at 500
    # mails/s a pool of 10 runs dry and every account's next send is late
    # (docs/benchmarks.md).
    db_pool_max: int = Field(40, ge=1, description="Largest number of PostgreSQL connections.")
    fernet_keys: SecretStr = Field(
        SecretStr(""), description="Comma-separated Fernet keys, newest first."
    )
    smtp_ca_file: str | None = Field(
        None, description="Extra CA certificates (PEM) trusted for SMTP, POP and IMAP TLS."
    )
    replica_id: str = Field(
        default_factory=_default_replica_id, description="This sender's name among replicas."
    )
    smtp_timeout_s: float = Field(30.0, gt=0, description="Timeout of each SMTP network step.")
    smtp_idle_close_s: float = Field(
        60.0, gt=0, description="An account's SMTP session idle this long is closed."
    )
    pop_max_age_s: float = Field(
        300.0, gt=0, description="POP before SMTP is repeated when the last login is older."
    )
    lease_ttl_s: float = Field(
        8.0, gt=0, description="How long an account's send lease outlives a dead sender (a "
        "longer send renews it): the longest a dead replica's account waits for another.",
    )
    lease_hold_s: float = Field(
        5.0, gt=0,
        description="After a send the account's lease stays this sender's for the pause plus "
        "this long, so that its next send needs no round trip to take it.",
    )
    outbox_poll_s: float = Field(
        1.0, gt=0, description="How often the event outbox is checked without a wake-up."
    )
    outbox_linger_ms: int = Field(
        10, ge=0, le=1000,
        description="While events keep coming, the relay publishes them at most this often, "
        "in batches; the first after a quiet spell goes out at once.",
    )
    max_interval_ms: int = Field(
        1_500_000, ge=0, le=1_700_000,
        description="Cap of the pace, throttling included (under RabbitMQ's 30-min timeout).",
    )
    retry_delays_s: str = Field(
        "30,120,600,3600", description="Delays of the retry queues, comma-separated seconds."
    )
    retry_max_age_s: float = Field(
        86400.0, gt=0, description="A recipient still failing this long after queuing fails."
    )
    retry_unknown: bool = Field(
        False, description="Retry an ambiguous send (may double a mail) instead of `unknown`."
    )
    connect_failures_to_pause: int = Field(
        3, ge=1, description="Connection failures in a row that pause an account."
    )
    probe_min_s: float = Field(60.0, gt=0, description="First probe of a paused account.")
    quota_hold_s: float = Field(
        30.0, ge=0, le=300,
        description="A full quota window that frees within this long is waited out with the "
        "job in hand; a longer wait pauses the account (reason quota) until it frees.",
    )
    quota_wait_s: float = Field(
        600.0, gt=0,
        description="After a provider's quota reply that names no wait, the account resumes "
        "after this long, doubling at each reply in a row, up to a day.",
    )
    probe_max_s: float = Field(1800.0, gt=0, description="Longest wait between probes.")
    reconcile_s: float = Field(
        30.0, gt=0, description="How often consumers are checked against the accounts table."
    )
    sweep_s: float = Field(
        300.0, gt=0, description="How often recipients of deleted accounts are settled."
    )
    sweep_grace_s: float = Field(
        60.0, ge=0, description="A deleted account's recipients are swept this long after."
    )
    consumers_per_channel: int = Field(
        100, ge=1, le=1000, description="Account consumers sharing one AMQP channel."
    )

    bounce_soft_limit: int = Field(
        3, ge=1, description="Soft bounces of an address within the window that suppress it."
    )
    bounce_soft_window_days: float = Field(
        30.0, gt=0, description="The window of the soft bounces counted, in days."
    )
    bounce_timeout_s: float = Field(
        30.0, gt=0, description="Timeout of each network step with a bounce mailbox."
    )
    bounce_batch: int = Field(
        500, ge=1, description="Messages a bounce mailbox's reader reads before it yields "
        "the lease; a fuller mailbox is read on in the next pass at once."
    )
    bounce_lease_ttl_s: float = Field(
        120.0, gt=0, description="How long a bounce mailbox's lease outlives a dead reader."
    )

    def encryption_keys(self) -> list[str]:
        return parse_keys(self.fernet_keys.get_secret_value())

    def retry_tiers(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.retry_delays_s.split(",") if part.strip())
