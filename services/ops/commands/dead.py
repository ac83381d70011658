"""`dead list`, `dead show`, `dead replay`: the dead-letter queue mail.dead, read without
losing a message, and replayed to where its messages came from."""

import argparse
from typing import Any, TextIO

from aio_pika.abc import AbstractConnection

from services.ops.commands import Verbs
from services.ops.dead import MAX_READ, DeadQueue, replay, resolve
from services.ops.errors import OpsError
from services.ops.letters import Unreplayable, preview, selector
from services.ops.output import table, write_json
from services.ops.settings import OpsSettings, open_broker
from shared.topology import Topology

NAMES = ("dead",)


def add_parsers(commands: Verbs, output: argparse.ArgumentParser) -> None:
    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument("--max-read", type=int, default=MAX_READ, metavar="N",
                         help="read at most N messages of mail.dead (default %(default)s)")
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
    chosen = dead_commands.add_parser(
        "replay", parents=[output, reading],
        help="send messages back where they came from, then remove them from mail.dead")
    chosen.add_argument("--all", action="store_true", help="every message")
    chosen.add_argument("--message-id", action="extend", nargs="+", default=[],
                        metavar="ID", help="the messages with these message_ids")
    chosen.add_argument("--reason", action="extend", nargs="+", default=[], metavar="REASON",
                        help="only messages with this reason (x-reason, or x-death's)")
    chosen.add_argument("--dry-run", action="store_true",
                        help="print what would happen; change nothing")


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


async def run(args: argparse.Namespace, settings: OpsSettings, topology: Topology,
              out: TextIO) -> int:
    async with open_broker(settings) as connection:
        if args.dead_command == "replay":
            return await _replay(args, connection, topology, out)
        async with DeadQueue(connection, topology, args.max_read) as dead:
            if args.dead_command == "list":
                _list(args, dead, topology, out)
                return 0
            shown = await _show(args.key, dead, connection, topology)
    if args.json:
        write_json(shown, out)
    else:
        for index, details in enumerate(shown):
            if index:
                out.write("\n")
            print_letter(details, out)
    return 0


def _list(args: argparse.Namespace, dead: DeadQueue, topology: Topology, out: TextIO) -> None:
    letters = dead.letters[: max(args.limit, 0)]
    if args.json:
        write_json({"queue": topology.dead_queue, "read": len(dead.letters),
                    "more_unread": dead.truncated,
                    "messages": [x.summary() for x in letters]}, out)
        return
    more = " (and more, not read)" if dead.truncated else ""
    out.write(f"{topology.dead_queue}: {len(dead.letters)} messages{more}, "
              f"showing {len(letters)}\n")
    if letters:
        table(["#", "MESSAGE ID", "REASON", "DELIVERY ID", "FROM", "DETAIL / BODY"],
              [[x.position, x.message_id, x.reason, x.delivery_id, x.origin(),
                x.header("x-detail") or preview(x.message.body, 60)] for x in letters],
              [6, 40, 22, 30, 50, 70], out)


async def _show(key: str, dead: DeadQueue, connection: AbstractConnection,
                topology: Topology) -> list[dict[str, Any]]:
    """The details of the messages `key` names, each with where a replay would send it."""
    found = dead.find(key)
    if not found:
        raise OpsError(f"no message {key!r} in {topology.dead_queue} "
                       f"({len(dead.letters)} read)")
    shown = []
    for letter in found:
        details = letter.details()
        try:
            details["replay"] = str(await resolve(connection, letter, topology))
        except Unreplayable as refusal:
            details["replay"] = f"refused: {refusal}"
        shown.append(details)
    return shown


async def _replay(args: argparse.Namespace, connection: AbstractConnection,
                  topology: Topology, out: TextIO) -> int:
    select = selector(args.all, args.message_id, args.reason)
    outcomes, truncated = await replay(connection, topology, select, args.dry_run,
                                       args.max_read)
    missing = sorted(set(args.message_id) - {o.message_id for o in outcomes})
    if args.json:
        write_json({"dry_run": args.dry_run, "outcomes": [o.as_json() for o in outcomes],
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
