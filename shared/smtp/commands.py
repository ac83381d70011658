"""The commands whose rules are the server's extensions (AUTH, MAIL's options) or aiosmtplib's
limits (DATA in two halves), on a connection past EHLO; each raises what a step maps."""

import re
from collections.abc import Callable

import aiosmtplib
from aiosmtplib import SMTPResponse

from shared.smtp.errors import SmtpStageError

_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


async def login(smtp: aiosmtplib.SMTP, username: str, password: str,
                offered: list[str]) -> SMTPResponse:
    """AUTH with a mechanism of aiosmtplib's; `offered`: the server's, for the error."""
    if not smtp.supports_extension("auth"):
        raise SmtpStageError("auth", None, "server offered no AUTH mechanism",
                             "SMTPNotSupported", permanent=False)
    if not smtp.supported_auth_methods:
        raise SmtpStageError(
            "auth", None,
            f"server offered AUTH {' '.join(offered)}, none of CRAM-MD5, PLAIN, LOGIN",
            "SMTPNotSupported", permanent=False)
    return await smtp.login(username, password)


async def mail(smtp: aiosmtplib.SMTP, mail_from: str, message: bytes,
               smtputf8: bool) -> SMTPResponse:
    options = []
    if smtputf8:
        if not smtp.supports_extension("smtputf8"):
            raise SmtpStageError(
                "mail", None,
                "an address is not ASCII and the server does not offer SMTPUTF8",
                "SMTPNotSupported", permanent=True)
        options.append("SMTPUTF8")
    if smtp.supports_extension("size"):
        options.append(f"SIZE={len(message)}")
    if not message.isascii() and smtp.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    return await smtp.mail(mail_from, options=options,
                           encoding="utf-8" if smtputf8 else "ascii")


async def data(smtp: aiosmtplib.SMTP, message: bytes,
               written: Callable[[], None]) -> SMTPResponse:
    """DATA, then the payload; `written` is called just before the payload is written."""
    # DATA in two halves (aiosmtplib's data() is one call) so that we know whether the
    # payload was written before a failure: after it, a lost reply is ambiguous.
    reply = await smtp.execute_command(b"DATA")
    if reply.code != 354:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    protocol = smtp.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    written()
    protocol.write(data_payload(message))
    reply = await protocol.read_response()
    if reply.code != 250:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return reply


def data_payload(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends, leading dots doubled, ending CRLF.CRLF."""
    payload = _LINE_END.sub(b"\r\n", message)
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    return _LEADING_DOT.sub(b"..", payload) + b".\r\n"
