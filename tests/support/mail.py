"""What the tests send and measure: a delivery's recipients, the pauses a server saw."""

import itertools
from collections.abc import Sequence

from tests.support.smtp_servers import Received, SmtpTestServer


def addressed(emails: Sequence[str]) -> list[dict]:
    """The recipients of a delivery request, one for each address."""
    return [{"email": address, "name": f"名前 {i}", "vars": {"plan": "gold"}}
            for i, address in enumerate(emails)]


def recipients(count: int, prefix: str = "r") -> list[dict]:
    """`count` recipients, `<prefix>0@example.com` and on."""
    return addressed([f"{prefix}{i}@example.com" for i in range(count)])


def gaps(server: SmtpTestServer | Sequence[Received]) -> list[float]:
    """Each pause in seconds as the server saw it: one transaction's 250 (its DATA reply) to
    the next one's MAIL FROM, in the order the server took them."""
    messages = server.messages if isinstance(server, SmtpTestServer) else server
    return [b.started_at - a.ended_at for a, b in itertools.pairwise(messages)]
