"""What a session connects to: the account's server, login and TLS, and the context that
verifies the server's certificate."""

import ssl
from dataclasses import dataclass, field

from shared.logging import register_login
from shared.messages import Tls
from shared.smtp.pop import PopLogin


@dataclass(frozen=True)
class SmtpEndpoint:
    host: str
    port: int
    tls: Tls
    local_hostname: str | None = None
    username: str | None = None  # None: no AUTH
    password: str | None = field(default=None, repr=False)
    pop: PopLogin | None = None

    def __post_init__(self) -> None:
        # Also a test mail's password that was never stored (so never decrypted).
        register_login(self.username, self.password)


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verifying context (ssl.create_default_context); extra CA file trusted when given
    (tests use a self-signed CA)."""
    context = ssl.create_default_context()
    if ca_file:
        # In addition to the system's CAs: create_default_context(cafile=) would replace them.
        context.load_verify_locations(cafile=ca_file)
    return context
