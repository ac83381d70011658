"""`python -m services.config_svc [serve|migrate|rotate-keys|token]`."""

import argparse
import asyncio
import sys

import structlog

from services.config_svc import repository
from services.config_svc.main import MIGRATIONS, SERVICE, serve
from services.config_svc.settings import ConfigSettings
from shared.auth import ADMIN_ROLE, issue_token
from shared.crypto import SecretBox
from shared.db import create_pool, migrate_service
from shared.runtime import start_logging

log = structlog.get_logger(__name__)

async def rotate_keys(settings: ConfigSettings) -> int:
    """Re-encrypts every stored password with the newest key, in one transaction."""
    box = SecretBox(settings.encryption_keys())
    pool = await create_pool(settings.postgres_dsn.get_secret_value(), 1,
                             pooling=settings.db_pooling)
    try:
        async with pool.acquire() as db, db.transaction():
            rows = await repository.all_with_secrets(db)
            for row in rows:
                account_id = str(row["id"])
                await repository.set_secrets(db, row["id"], {
                    column: box.rotate(row[column], account_id=account_id, field=field)
                    if row[column] else None
                    for field, column in repository.SECRETS.items()})
        log.info("keys rotated", accounts=len(rows))
        return len(rows)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.config_svc", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the accounts API (the default)")
    commands.add_parser("migrate", help="apply the database migrations")
    commands.add_parser("rotate-keys", help="re-encrypt every password with the newest key")
    token = commands.add_parser("token", help="print an HS256 token for local use")
    token.add_argument("--sub", required=True)
    token.add_argument("--admin", action="store_true", help=f"with the role {ADMIN_ROLE}")
    token.add_argument("--ttl", type=int, default=12 * 3600, help="lifetime in seconds")
    args = parser.parse_args(argv)

    settings = ConfigSettings()
    if args.command == "token":
        if settings.jwt_algorithm != "HS256" or settings.jwt_secret is None:
            sys.exit("token needs MAIL_JWT_SECRET (HS256)")
        print(issue_token(settings.jwt_secret.get_secret_value(), args.sub,
                          [ADMIN_ROLE] if args.admin else [], args.ttl))
        return
    start_logging(settings)
    if args.command == "migrate":
        dsn = settings.postgres_dsn.get_secret_value()
        asyncio.run(migrate_service(dsn, SERVICE, MIGRATIONS, settings.db_pooling))
    elif args.command == "rotate-keys":
        asyncio.run(rotate_keys(settings))
    else:
        asyncio.run(serve(settings))
