"""The folder of one stack: its paths, ports (ports.json) and password."""

import hashlib
import json
import secrets
import tempfile
from pathlib import Path

from .common import any_free_port, port_is_free, write_secret

DEFAULT_PORTS = {"amqp": 5672, "management": 15672, "postgres": 5432,
                 "imap": 10143, "imaps": 10993, "pop3": 10110, "pop3s": 10995}
RABBIT_PORTS = ("amqp", "management", "dist")  # a RabbitMQ node's own; epmd is shared
PORT_NAMES = ("amqp", "management", "dist", "epmd", "postgres", "imap", "imaps", "pop3", "pop3s")


class Stack:
    """Paths, ports and password of the stack living in one DIR."""

    def __init__(self, directory):
        self.dir = Path(directory).resolve()
        self.rabbit = self.dir / "rabbitmq"
        # One node name per DIR, so that two stacks can run side by side.
        digest = self.digest = hashlib.sha256(str(self.dir).encode()).hexdigest()[:10]
        self.node = f"mail-{digest}@localhost"
        # Where user postgres cannot enter DIR (a checkout under a 0700 home), its data live
        # in a private folder of the system's temporary directory, named after DIR and
        # recorded in DIR/postgres-home; `purge` removes it.
        self.pg_home_record = self.dir / "postgres-home"
        self.pg_home_outside = Path(tempfile.gettempdir()) / f"mail-pg-{digest}"
        home = self.dir
        if self.pg_home_record.exists():
            home = Path(self.pg_home_record.read_text().strip())
        self.pgdata = home / "postgres"
        self.pgrun = home / "postgres-run"  # unix socket and log, owned by postgres
        self.home = self.rabbit / "home"  # the Erlang cookie, one for a cluster's nodes
        self.port_keys = RABBIT_PORTS
        try:
            self.ports = json.loads((self.dir / "ports.json").read_text())
        except (OSError, ValueError):
            self.ports = {}

    def password(self):
        """Generated on the first `up` and kept in DIR, so URLs stay valid across restarts."""
        path = self.dir / "password"
        # One beginning with "-" (1 in 64 of token_urlsafe) is an option to rabbitmqctl: a
        # letter first; one kept from before with a "-" first is replaced (every `up` sets
        # the users' passwords again).
        if not path.exists() or path.read_text().startswith("-"):
            write_secret(path, "m" + secrets.token_urlsafe(18) + "\n")  # no URL escaping needed
        return path.read_text().strip()

    def choose_ports(self, mode, held_by_us, names=PORT_NAMES):
        """Saved port if still free (or held by our own server), else the default, else any."""
        ports = {}
        for name in names:
            saved = self.ports.get(name)
            if saved and (name in held_by_us or port_is_free(saved)):
                ports[name] = saved
                continue
            wanted = DEFAULT_PORTS.get(name) if mode == "default" else None
            if wanted and wanted not in ports.values() and port_is_free(wanted):
                ports[name] = wanted
                continue
            ports[name] = any_free_port(set(ports.values()))
            if wanted or saved:
                print(f"stack: port {wanted or saved} for {name} is taken, using {ports[name]}")
        self.ports = ports
        (self.dir / "ports.json").write_text(json.dumps(ports, indent=2) + "\n")
