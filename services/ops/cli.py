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
import contextlib
import getpass
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any, TextIO

import asyncpg
import orjson
from aio_pika.abc import AbstractConnection
from pydantic import Field, SecretStr

from services.config_svc import ops_api
from services.dispatcher import suppressions
from services.ops import accounts as ops_accounts
from services.ops import dead as ops_dead
from services.ops import letters as ops_letters
from services.ops.errors import OpsError
from shared.addresses import check_address
from shared.broker import Nodes
from shared.crypto import UndecryptableSecret, parse_keys
from shared.db import create_pool
from shared.logging import configure_logging, register_secret
from shared.settings import ServiceSettings
from shared.topology import Topology


class OpsSettings(ServiceSettings):
    """Only names the services already use, so the README's settings table covers them."""

    fernet_keys: SecretStr = Field(
        SecretStr(""), description="Comma-separated Fernet keys, newest first (rotate-keys)."
    )

    def encryption_keys(self) -> list[str]:
        return parse_keys(self.fernet_keys.get_secret_value())


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mail-ops", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See docs/operations.md for what the queues hold and the procedures.")
    parser.add_argument("--prefix", default="mail",
                        help="common prefix of the exchange and queue names (default: mail)")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="JSON on stdout, for machines")
    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument("--max-read", type=int, default=ops_dead.MAX_READ, metavar="N",
                         help="read at most N messages of mail.dead (default %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    accounts = commands.add_parser("accounts", parents=[output],
                                   help="list accounts with their state and queue depth")
    accounts.add_argument("account_ids", nargs="*", metavar="ACCOUNT_ID",
                          help="only these accounts (default: every live account)")
    for name, verb in (("pause", "stop"), ("resume", "restart")):
        command = commands.add_parser(name, parents=[output],
                                      help=f"{verb} sending for an account (as the API)")
        command.add_argument("account_id", metavar="ACCOUNT_ID")
        command.add_argument("--by", default=_login(), metavar="NAME",
                             help="who does it, recorded as updated_by cli:NAME "
                                  "(default: the login name)")

    dead = commands.add_parser("dead", help="read and replay the dead-letter queue mail.dead")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    listing = dead_commands.add_parser("list", parents=[output, reading],
                                       help="the messages in mail.dead, oldest first")
    listing.add_argument("--limit", type=int, default=50, metavar="N",
                         help="print the first N (default %(default)s); every message is "
                              "read anyway, to keep the queue's order")
    show = dead_commands.add_parser("show", parents=[output, reading],
                                    help="one message in full: by message_id, or by its "
                                         "position N in `dead list`")
    show.add_argument("key", metavar="N|MESSAGE_ID")
    replay = dead_commands.add_parser(
        "replay", parents=[output, reading],
        help="send messages back where they came from, then remove them from mail.dead")
    replay.add_argument("--all", action="store_true", help="every message")
    replay.add_argument("--message-id", action="extend", nargs="+", default=[],
                        metavar="ID", help="the messages with these message_ids")
    replay.add_argument("--reason", action="extend", nargs="+", default=[], metavar="REASON",
                        help="only messages with this reason (x-reason, or x-death's)")
    replay.add_argument("--dry-run", action="store_true",
                        help="print what would happen; change nothing")

    commands.add_parser("rotate-keys", parents=[output],
                        help="re-encrypt every stored password with the first key of "
                             "MAIL_FERNET_KEYS")

    listed = commands.add_parser("suppressions", parents=[output],
                                 help="the addresses not sent to any more, newest first")
    listed.add_argument("--q", default=None, metavar="TEXT", help="a part of the address")
    listed.add_argument("--limit", type=int, default=50, metavar="N")
    listed.add_argument("--offset", type=int, default=0, metavar="N")
    add = commands.add_parser("suppress", parents=[output],
                              help="put an address on the suppression list")
    add.add_argument("email", metavar="EMAIL")
    add.add_argument("--reason", default="manual", choices=suppressions.REASONS)
    add.add_argument("--detail", default=None, metavar="TEXT")
    add.add_argument("--by", default=_login(), metavar="NAME",
                     help="recorded as the source cli:NAME (default: the login name)")
    remove = commands.add_parser("unsuppress", parents=[output],
                                 help="take an address off the suppression list")
    remove.add_argument("email", metavar="EMAIL")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.command == "dead" and args.dead_command == "replay"
            and not (args.all or args.message_id or args.reason)):
        parser.error("dead replay: say which messages: --all, --message-id ID or --reason R")
    return args


# -- printing ---------------------------------------------------------------------------------


def _json(value: Any, out: TextIO) -> None:
    out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def _cut(value: Any, width: int) -> str:
    text = "-" if value is None or value == "" else " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], widths: Sequence[int],
          out: TextIO) -> None:
    """Columns cut to at most `widths` characters; the last one is not padded."""
    cells = [[_cut(value, width) for value, width in zip(row, widths, strict=True)]
             for row in [headers, *rows]]
    sizes = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(cell.ljust(size) for cell, size in zip(row[:-1], sizes, strict=False))
        out.write((line + "  " + row[-1]).rstrip() + "\n")


def _when(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else None


def print_accounts(statuses: list[ops_accounts.AccountStatus], out: TextIO) -> None:
    rows = []
    for s in statuses:
        state = f"paused ({s.paused_reason})" if s.paused else "running"
        pace = (f"{s.throttled_interval_ms} throttled ({s.send_interval_ms})"
                if s.throttled_interval_ms is not None else str(s.send_interval_ms))
        if s.resumes_at is not None and s.paused:
            state += f" until {_when(s.resumes_at)}"
        quotas = " ".join(f"{q['used']}/{q['limit']} a {window}"
                          for window, q in s.quotas.items())
        rows.append([s.id, s.name, "yes" if s.is_default else "", state, pace, quotas,
                     "?" if s.queue_depth is None else s.queue_depth, _when(s.last_send),
                     s.last_error or s.queue_error])
    table(["ID", "NAME", "DEFAULT", "STATE", "PACE MS", "QUOTAS", "QUEUE", "LAST SEND",
           "LAST ERROR"], rows, [36, 30, 7, 24, 28, 40, 8, 20, 60], out)


def print_letter(details: dict[str, Any], out: TextIO) -> None:
    order = ("position", "message_id", "reason", "detail", "delivery_id", "account_id",
             "routing_key", "x-reason", "x-detail", "x-delivery-id", "x-original-exchange",
             "x-original-routing-key", "x-original-queue", "replay")
    for key in order:
        if details.get(key) not in (None, ""):
            out.write(f"{key + ':':24} {details[key]}\n")
    for index, death in enumerate(details["x-death"]):
        out.write(f"{'x-death[' + str(index) + ']:':24} "
                  + ", ".join(f"{k}={v}" for k, v in death.items()) + "\n")
    shown = {"x-reason", "x-detail", "x-delivery-id", "x-original-exchange",
             "x-original-routing-key", "x-original-queue", "x-death"}
    for key, value in details["headers"].items():
        if key not in shown:
            out.write(f"{'header ' + key + ':':24} {value}\n")
    for key, value in details["properties"].items():
        if value not in (None, ""):
            out.write(f"{key + ':':24} {value}\n")
    out.write(f"body ({details['body_bytes']} bytes):\n{details['body_preview']}\n")


# -- commands ---------------------------------------------------------------------------------


async def _accounts(args: argparse.Namespace, settings: OpsSettings, topology: Topology,
                    out: TextIO) -> int:
    async with _pool(settings) as pool, _broker(settings) as connection:
        statuses = await ops_accounts.list_accounts(pool, connection, topology,
                                                    args.account_ids)
    if args.json:
        _json([s.as_json() for s in statuses], out)
    else:
        print_accounts(statuses, out)
    return 0


async def _pause(args: argparse.Namespace, settings: OpsSettings, topology: Topology,
                 out: TextIO) -> int:
    paused = args.command == "pause"
    async with _pool(settings) as pool, _broker(settings) as connection:
        result = await ops_accounts.set_paused(pool, connection, topology, args.account_id,
                                               paused, args.by, settings.encryption_keys())
    if args.json:
        _json(asdict(result), out)
    else:
        state = "paused" if result.paused else "resumed"
        out.write(f"{result.account_id} ({result.name}) "
                  + (f"{state} by {result.by}" if result.changed else f"was already {state}")
                  + f"; account events published: {result.events_published}\n")
    return 0


async def _dead(args: argparse.Namespace, settings: OpsSettings, topology: Topology,
                out: TextIO) -> int:
    async with _broker(settings) as connection:
        if args.dead_command == "replay":
            return await _replay(args, connection, topology, out)
        async with ops_dead.DeadQueue(connection, topology, args.max_read) as dead:
            if args.dead_command == "list":
                _dead_list(args, dead, topology, out)
                return 0
            found = dead.find(args.key)
            if not found:
                raise OpsError(f"no message {args.key!r} in {topology.dead_queue} "
                               f"({len(dead.letters)} read)")
            shown = []
            for letter in found:
                details = letter.details()
                try:
                    details["replay"] = str(await ops_dead.resolve(connection, letter, topology))
                except ops_letters.Unreplayable as refusal:
                    details["replay"] = f"refused: {refusal}"
                shown.append(details)
    if args.json:
        _json(shown, out)
    else:
        for index, details in enumerate(shown):
            if index:
                out.write("\n")
            print_letter(details, out)
    return 0


def _dead_list(args: argparse.Namespace, dead: ops_dead.DeadQueue, topology: Topology,
               out: TextIO) -> None:
    letters = dead.letters[: max(args.limit, 0)]
    if args.json:
        _json({"queue": topology.dead_queue, "read": len(dead.letters),
               "more_unread": dead.truncated, "messages": [x.summary() for x in letters]}, out)
        return
    more = " (and more, not read)" if dead.truncated else ""
    out.write(f"{topology.dead_queue}: {len(dead.letters)} messages{more}, "
              f"showing {len(letters)}\n")
    if letters:
        table(["#", "MESSAGE ID", "REASON", "DELIVERY ID", "FROM", "DETAIL / BODY"],
              [[x.position, x.message_id, x.reason, x.delivery_id, x.origin(),
                x.header("x-detail") or ops_letters.preview(x.message.body, 60)] for x in letters],
              [6, 40, 22, 30, 50, 70], out)


async def _replay(args: argparse.Namespace, connection: AbstractConnection,
                  topology: Topology, out: TextIO) -> int:
    select = ops_letters.selector(args.all, args.message_id, args.reason)
    outcomes, truncated = await ops_dead.replay(connection, topology, select, args.dry_run,
                                                args.max_read)
    missing = sorted(set(args.message_id) - {o.message_id for o in outcomes})
    if args.json:
        _json({"dry_run": args.dry_run, "outcomes": [o.as_json() for o in outcomes],
               "not_found": missing, "more_unread": truncated}, out)
    else:
        for o in outcomes:
            label = f"#{o.position} {o.message_id or '(no message_id)'} ({o.reason or '-'})"
            if o.action in ("replayed", "would_replay"):
                verb = "replayed" if o.action == "replayed" else "would replay"
                out.write(f"{verb} {label} to {o.target} ({o.detail})\n")
            else:
                out.write(f"{o.action} {label}: {o.detail}\n")
        for message_id in missing:
            out.write(f"not found {message_id}\n")
        if truncated:
            out.write(f"only the first {args.max_read} messages were read (--max-read)\n")
        counts = {action: sum(o.action == action for o in outcomes)
                  for action in ("replayed", "would_replay", "refused", "failed")}
        out.write(", ".join(f"{n} {a.replace('_', ' ')}" for a, n in counts.items() if n)
                  or "nothing selected")
        out.write("\n")
    return 1 if missing or any(o.action in ("refused", "failed") for o in outcomes) else 0


async def _rotate_keys(args: argparse.Namespace, settings: OpsSettings, out: TextIO) -> int:
    try:
        count = await ops_api.rotate_keys(settings.postgres_dsn, settings.fernet_keys)
    except (ValueError, UndecryptableSecret) as error:
        raise OpsError(str(error)) from None
    if args.json:
        _json({"accounts": count}, out)
    else:
        out.write(f"passwords of {count} accounts re-encrypted with the first key of "
                  "MAIL_FERNET_KEYS\n")
    return 0


async def _suppressions(args: argparse.Namespace, settings: OpsSettings, out: TextIO) -> int:
    async with _pool(settings) as pool:
        if args.command == "suppressions":
            found, total = await suppressions.listed(pool, args.q, args.limit, args.offset)
            if args.json:
                _json({"items": found, "total": total}, out)
            else:
                table(["EMAIL", "REASON", "SOURCE", "SINCE", "DETAIL"],
                      [[r["email"], r["reason"], r["source"], _when(r["created_at"]),
                        r["detail"]] for r in found], [60, 10, 30, 20, 80], out)
                out.write(f"{len(found)} of {total}\n")
            return 0
        if args.command == "suppress":
            try:
                email = check_address(args.email)
            except ValueError as error:
                raise OpsError(f"{args.email}: {error}") from None
            row = await suppressions.add(pool, email, args.reason, f"cli:{args.by}",
                                         args.detail)
            if args.json:
                _json(row, out)
            else:
                out.write(f"{row['email']} suppressed ({row['reason']}, {row['source']})\n")
            return 0
        if not await suppressions.remove(pool, args.email):
            raise OpsError(f"{args.email} is not on the suppression list")
        if args.json:
            _json({"email": args.email, "removed": True}, out)
        else:
            out.write(f"{args.email} taken off the suppression list\n")
        return 0


@contextlib.asynccontextmanager
async def _pool(settings: OpsSettings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.postgres_dsn.get_secret_value(), max_size=2,
                             pooling=settings.db_pooling)
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _broker(settings: OpsSettings) -> AsyncIterator[AbstractConnection]:
    # Not robust: a one-shot tool reports a lost connection rather than carrying on with a
    # new channel that holds none of the messages it read.
    connection = await Nodes(settings.amqp_url.get_secret_value()).connect(
        timeout=15, client_properties={"connection_name": "ops-cli"})
    try:
        yield connection
    finally:
        await connection.close()


async def run(args: argparse.Namespace, settings: OpsSettings, out: TextIO | None = None) -> int:
    """Runs one parsed command; returns the exit code. Refusals go to stderr."""
    out = out or sys.stdout
    topology = Topology(prefix=args.prefix)
    try:
        if args.command == "accounts":
            return await _accounts(args, settings, topology, out)
        if args.command in ("pause", "resume"):
            return await _pause(args, settings, topology, out)
        if args.command == "dead":
            return await _dead(args, settings, topology, out)
        if args.command in ("suppressions", "suppress", "unsuppress"):
            return await _suppressions(args, settings, out)
        return await _rotate_keys(args, settings, out)
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
