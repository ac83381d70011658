"""`rotate-keys`: config_svc's own re-encryption of the stored passwords."""

import argparse
from typing import TextIO

from services.config_svc import ops_api
from services.ops.commands import Verbs
from services.ops.errors import OpsError
from services.ops.output import write_json
from services.ops.settings import OpsSettings
from shared.crypto import UndecryptableSecret
from shared.topology import Topology

NAMES = ("rotate-keys",)


def add_parsers(commands: Verbs, output: argparse.ArgumentParser) -> None:
    commands.add_parser("rotate-keys", parents=[output],
                        help="re-encrypt every stored password with the first key of "
                             "MAIL_FERNET_KEYS")


async def run(args: argparse.Namespace, settings: OpsSettings, _topology: Topology,
              out: TextIO) -> int:
    try:
        count = await ops_api.rotate_keys(settings.postgres_dsn, settings.fernet_keys)
    except (ValueError, UndecryptableSecret) as error:
        raise OpsError(str(error)) from None
    if args.json:
        write_json({"accounts": count}, out)
    else:
        out.write(f"passwords of {count} accounts re-encrypted with the first key of "
                  "MAIL_FERNET_KEYS\n")
    return 0
