"""`suppressions`, `suppress`, `unsuppress`: the dispatcher's suppression list, as its API
changes it."""

import argparse
from typing import TextIO

import asyncpg

from services.dispatcher import suppressions
from services.ops.commands import Verbs
from services.ops.errors import OpsError
from services.ops.output import table, when, write_json
from services.ops.settings import OpsSettings, login, open_pool
from shared.addresses import check_address
from shared.topology import Topology

NAMES = ("suppressions", "suppress", "unsuppress")


def add_parsers(commands: Verbs, output: argparse.ArgumentParser) -> None:
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
    add.add_argument("--by", default=login(), metavar="NAME",
                     help="recorded as the source cli:NAME (default: the login name)")
    remove = commands.add_parser("unsuppress", parents=[output],
                                 help="take an address off the suppression list")
    remove.add_argument("email", metavar="EMAIL")


async def run(args: argparse.Namespace, settings: OpsSettings, _topology: Topology,
              out: TextIO) -> int:
    async with open_pool(settings) as pool:
        if args.command == "suppressions":
            return await _list(args, pool, out)
        if args.command == "suppress":
            return await _suppress(args, pool, out)
        return await _unsuppress(args, pool, out)


async def _list(args: argparse.Namespace, pool: asyncpg.Pool, out: TextIO) -> int:
    found, total = await suppressions.listed(pool, args.q, args.limit, args.offset)
    if args.json:
        write_json({"items": found, "total": total}, out)
    else:
        table(["EMAIL", "REASON", "SOURCE", "SINCE", "DETAIL"],
              [[r["email"], r["reason"], r["source"], when(r["created_at"]), r["detail"]]
               for r in found], [60, 10, 30, 20, 80], out)
        out.write(f"{len(found)} of {total}\n")
    return 0


async def _suppress(args: argparse.Namespace, pool: asyncpg.Pool, out: TextIO) -> int:
    try:
        email = check_address(args.email)
    except ValueError as error:
        raise OpsError(f"{args.email}: {error}") from None
    row = await suppressions.add(pool, email, args.reason, f"cli:{args.by}", args.detail)
    if args.json:
        write_json(row, out)
    else:
        out.write(f"{row['email']} suppressed ({row['reason']}, {row['source']})\n")
    return 0


async def _unsuppress(args: argparse.Namespace, pool: asyncpg.Pool, out: TextIO) -> int:
    if not await suppressions.remove(pool, args.email):
        raise OpsError(f"{args.email} is not on the suppression list")
    if args.json:
        write_json({"email": args.email, "removed": True}, out)
    else:
        out.write(f"{args.email} taken off the suppression list\n")
    return 0
