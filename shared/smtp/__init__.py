"""One SMTP session of one account: used by the config service's test mail and by the sender.

`SmtpSession` wraps aiosmtplib with the project's rules:

- every network step runs under `asyncio.timeout(timeout_s)`, and every failure becomes an
  `SmtpStageError` naming the stage that failed, the server's reply verbatim and whether
  retrying could help (`permanent`);
- TLS is exactly what the account says: `starttls` is required, never opportunistic, so a
  server that hides STARTTLS never sees the password; certificates are always verified;
- a session stays open between messages; a refused transaction is reset with RSET; a lost
  connection is reopened by the next `send`;
- after the DATA payload was written, a lost connection is ambiguous (`after_data`): the
  server may have accepted the message.

One task uses a session at a time. Passwords never appear in reprs, errors or stage details.

The session is in `session`, what it connects to in `endpoint`, its stages and failures in
`errors`, the commands bound by the server's extensions in `commands`, what a stage reports
in `details`, and POP-before-SMTP (the session is its one user) in `pop`. Callers import
from `shared.smtp`.
"""

from shared.messages import Tls
from shared.smtp.endpoint import SmtpEndpoint, client_ssl_context
from shared.smtp.errors import SmtpStageError, Stage, StageResult, Withdrawn
from shared.smtp.pop import PopLogin
from shared.smtp.session import SmtpSession

__all__ = [
    "PopLogin",
    "SmtpEndpoint",
    "SmtpSession",
    "SmtpStageError",
    "Stage",
    "StageResult",
    "Tls",
    "Withdrawn",
    "client_ssl_context",
]
