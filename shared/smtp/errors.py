"""The stages of a session, what each reports, and how a failed step becomes the
`SmtpStageError` that callers classify."""

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import aiosmtplib

Stage = Literal["resolve", "connect", "tls", "ehlo", "pop", "auth", "mail", "rcpt", "data"]

STEP_FAILURES = (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError)


class SmtpStageError(Exception):
    """A failed stage: `text` is the server's reply (or the OS/TLS error) verbatim.

    `permanent` is True for a 5xx reply and for a message this server can never take
    (SMTPUTF8 needed but not offered); 4xx, timeouts, connection and TLS errors are not.
    `after_data` is True when the DATA payload had been written before the failure.
    """

    def __init__(self, stage: Stage, code: int | None, text: str, exception: str, *,
                 permanent: bool, after_data: bool = False) -> None:
        self.stage = stage
        self.code = code
        self.text = text
        self.exception = exception
        self.permanent = permanent
        self.after_data = after_data
        reply = f"{code} {text}" if code is not None else text
        super().__init__(f"{stage} failed: {reply}")

    @property
    def ambiguous(self) -> bool:
        """The payload was written but no reply came: the server may have accepted it."""
        return self.after_data and self.code is None


class Withdrawn(Exception):
    """`before_data` withdrew the message: the transaction was reset before DATA."""


@dataclass
class StageResult:
    stage: Stage
    ok: bool
    duration_ms: float
    detail: str = ""


def stage_error(stage: Stage, exc: BaseException, *, timeout_s: float, after_data: bool,
                scrub: Callable[[str], str]) -> SmtpStageError:
    """The failure of one step (one of STEP_FAILURES), with the secrets `scrub` knows
    taken out of the text."""
    if isinstance(exc, TimeoutError):
        return SmtpStageError(stage, None, f"timed out after {timeout_s:g} s",
                              "TimeoutError", permanent=False, after_data=after_data)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
        return SmtpStageError(stage, exc.code, scrub(exc.message), type(exc).__name__,
                              permanent=500 <= exc.code <= 599, after_data=after_data)
    # aiosmtplib wraps the OS error of a failed connect: report the real one.
    if isinstance(exc, aiosmtplib.SMTPConnectError) and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        stage = "tls"  # implicit TLS fails inside connect
    text = exc.message if isinstance(exc, aiosmtplib.SMTPException) else str(exc)
    permanent = isinstance(exc, ValueError) and not isinstance(exc, OSError)
    return SmtpStageError(stage, None, scrub(text), type(exc).__name__,
                          permanent=permanent, after_data=after_data)


def breaks_connection(exc: BaseException) -> bool:
    """Timeouts, lost connections and unreadable replies leave the connection out of step."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code <= 0  # aiosmtplib's -1: a reply it could not parse
    return isinstance(exc, TimeoutError | OSError)
