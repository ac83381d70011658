"""`accounts`, `pause`, `resume`: the accounts' state, and pausing one as the API does."""

import argparse
from dataclasses import asdict
from typing import TextIO

from services.ops import accounts as ops_accounts
from services.ops.commands import Verbs
from services.ops.output import table, when, write_json
from services.ops.settings import OpsSettings, login, open_broker, open_pool
from shared.topology import Topology

NAMES = ("accounts", "pause", "resume")


def add_parsers(commands: Verbs, output: argparse.ArgumentParser) -> None:
    accounts = commands.add_parser("accounts", parents=[output],
                                   help="list accounts with their state and queue depth")
    accounts.add_argument("account_ids", nargs="*", metavar="ACCOUNT_ID",
                          help="only these accounts (default: every live account)")
    for name, verb in (("pause", "stop"), ("resume", "restart")):
        command = commands.add_parser(name, parents=[output],
                                      help=f"{verb} sending for an account (as the API)")
        command.add_argument("account_id", metavar="ACCOUNT_ID")
        command.add_argument("--by", default=login(), metavar="NAME",
                             help="who does it, recorded as updated_by cli:NAME "
                                  "(default: the login name)")


def print_accounts(statuses: list[ops_accounts.AccountStatus], out: TextIO) -> None:
    rows = []
    for s in statuses:
        state = f"paused ({s.paused_reason})" if s.paused else "running"
        pace = (f"{s.throttled_interval_ms} throttled ({s.send_interval_ms})"
                if s.throttled_interval_ms is not None else str(s.send_interval_ms))
        if s.resumes_at is not None and s.paused:
            state += f" until {when(s.resumes_at)}"
        quotas = " ".join(f"{q['used']}/{q['limit']} a {window}"
                          for window, q in s.quotas.items())
        rows.append([s.id, s.name, "yes" if s.is_default else "", state, pace, quotas,
                     "?" if s.queue_depth is None else s.queue_depth, when(s.last_send),
                     s.last_error or s.queue_error])
    table(["ID", "NAME", "DEFAULT", "STATE", "PACE MS", "QUOTAS", "QUEUE", "LAST SEND",
           "LAST ERROR"], rows, [36, 30, 7, 24, 28, 40, 8, 20, 60], out)


async def run(args: argparse.Namespace, settings: OpsSettings, topology: Topology,
              out: TextIO) -> int:
    if args.command == "accounts":
        return await _accounts(args, settings, topology, out)
    return await _pause(args, settings, topology, out)


async def _accounts(args: argparse.Namespace, settings: OpsSettings, topology: Topology,
                    out: TextIO) -> int:
    async with open_pool(settings) as pool, open_broker(settings) as connection:
        statuses = await ops_accounts.list_accounts(pool, connection, topology,
                                                    args.account_ids)
    if args.json:
        write_json([s.as_json() for s in statuses], out)
    else:
        print_accounts(statuses, out)
    return 0


async def _pause(args: argparse.Namespace, settings: OpsSettings, topology: Topology,
                 out: TextIO) -> int:
    paused = args.command == "pause"
    async with open_pool(settings) as pool, open_broker(settings) as connection:
        result = await ops_accounts.set_paused(pool, connection, topology, args.account_id,
                                               paused, args.by, settings.encryption_keys())
    if args.json:
        write_json(asdict(result), out)
    else:
        state = "paused" if result.paused else "resumed"
        out.write(f"{result.account_id} ({result.name}) "
                  + (f"{state} by {result.by}" if result.changed else f"was already {state}")
                  + f"; account events published: {result.events_published}\n")
    return 0
