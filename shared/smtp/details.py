"""What a stage reports (`StageResult.detail`, `duration_ms`) of a step that went well."""

import time

import aiosmtplib
from aiosmtplib import SMTPResponse


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def reply_text(reply: SMTPResponse) -> str:
    return f"{reply.code} {reply.message}"


def ehlo_text(reply: SMTPResponse) -> str:
    """An EHLO reply lists every extension: its first line (the server's name) is enough."""
    lines = reply.message.splitlines()
    return f"{reply.code} {lines[0] if lines else ''}".strip()


def address_list(addresses: list[str]) -> str:
    return ", ".join(dict.fromkeys(addresses))


def tls_info(smtp: aiosmtplib.SMTP) -> str:
    ssl_object = smtp.get_transport_info("ssl_object")
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()
