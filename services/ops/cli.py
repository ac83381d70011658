"""The operators' command line: `mail-ops [--prefix P] COMMAND ...`.

    accounts [ACCOUNT_ID ...] [--json]     accounts: state, pace, queue depth, last send/error
    pause ACCOUNT_ID [--by NAME]           as POST /v1/accounts/{id}/pause (reason operator)
    resume ACCOUNT_ID [--by NAME]          as POST /v1/accounts/{id}/resume
    dead list [--limit N] [--json]         the messages in mail.dead, oldest first
    dead show N|MESSAGE_ID [--json]        one of them in full (N: its position in the list)
    dead replay (--all | --message-id ID ... | --reason R ...) [--dry-run] [--json]
    rotate-keys                            as `python -m services.config_svc rotate-keys`
    suppressions [--q TEXT] [--limit N] [--json]   the suppression list, newest first
    suppress EMAIL [--reason R] [--detail TEXT] [--by NAME]   as POST /v1/suppressions
    unsuppress EMAIL                       as DELETE /v1/suppressions/{email}

Settings from the environment, as the services (MAIL_AMQP_URL, MAIL_POSTGRES_DSN,
MAIL_FERNET_KEYS, MAIL_LOG_LEVEL, MAIL_LOG_FORMAT); results on stdout, logs on stderr.
Exit code 0, 1 when something was refused or failed, 2 for a usage error.
"""

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

from services.ops.commands import accounts, dead, keys, suppressions
from services.ops.errors import OpsError
from services.ops.settings import OpsSettings
from shared.logging import configure_logging, register_secret
from shared.topology import Topology

# In the order `--help` lists their verbs.
GROUPS = (accounts, dead, keys, suppressions)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mail-ops", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See docs/operations.md for what the queues hold and the procedures.")
    parser.add_argument("--prefix", default="mail",
                        help="common prefix of the exchange and queue names (default: mail)")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="JSON on stdout, for machines")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(commands, output)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.command == "dead" and args.dead_command == "replay"
            and not (args.all or args.message_id or args.reason)):
        parser.error("dead replay: say which messages: --all, --message-id ID or --reason R")
    return args


async def run(args: argparse.Namespace, settings: OpsSettings, out: TextIO | None = None) -> int:
    """Runs one parsed command; returns the exit code. Refusals go to stderr."""
    out = out or sys.stdout
    topology = Topology(prefix=args.prefix)
    group = next(group for group in GROUPS if args.command in group.NAMES)
    try:
        return await group.run(args, settings, topology, out)
    except OpsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = OpsSettings()
    configure_logging(settings.log_level, settings.log_format, stream=sys.stderr)
    for secret in (settings.amqp_url, settings.postgres_dsn):
        register_secret(secret.get_secret_value())
    return asyncio.run(run(args, settings))


if __name__ == "__main__":
    sys.exit(main())
