"""`python -m deploy.local.mailcatcher`: an SMTP server on loopback that keeps every
message it accepts as a .eml file.

`make run` points the default account at it, so a delivery ends as files in `.run/mail/`.
"""

import argparse
import asyncio
import logging
import os
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from shared.logging import configure_logging

log = structlog.get_logger("mailcatcher")


class SaveToFolder:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.folder / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        partial = path.with_suffix(".part")
        data = envelope.original_content or b""
        partial.write_bytes(data)
        os.replace(partial, path)  # readers never see half a message
        log.info("mail caught", file=path.name, mail_from=envelope.mail_from,
                 rcpt_to=envelope.rcpt_tos, size=len(data))
        return "250 OK caught"


async def serve(folder: Path, host: str, port: int) -> None:
    handler = SaveToFolder(folder)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="mailcatcher.local", enable_SMTPUTF8=True,
                     data_size_limit=64 * 1024 * 1024),
        host=host, port=port,
    )
    log.info("mail catcher listening", host=host, port=port, folder=str(folder))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".run/mail"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    args = parser.parse_args()
    configure_logging()
    args.dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(serve(args.dir, args.host, args.port))


if __name__ == "__main__":
    main()
