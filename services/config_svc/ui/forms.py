"""Form values to the API's models and back: the seed's fields, their labels and the manual's
help, checkboxes and empty inputs, and per-field errors."""

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from services.config_svc.errors import AccountError


@dataclass(frozen=True)
class Field:
    name: str
    label: str  # an English msgid; the catalog has the seed's Japanese
    kind: str = "text"  # text, email, number, checkbox, password, select, words
    required: bool = False
    help: str = ""
    choices: tuple[str, ...] = ()


ACCOUNT_FIELDS = (
    Field("name", "Account name", required=True,
          help="A name that tells the account apart."),
    Field("personal", "Personal", "checkbox",
          help="Checked: nobody but the person who registered it may use it."),
    Field("from_address", "From address", "email", required=True,
          help="Mail is sent from this address."),
    Field("from_name", "From display name", help="The name shown with the address."),
    Field("reply_to", "Reply-to address", "email", help="May be left empty."),
    Field("smtp_host", "SMTP host", required=True,
          help="The outgoing (SMTP) server of the address above."),
    Field("smtp_port", "SMTP port", "number", required=True, help="For example 587."),
    Field("smtp_auth", "SMTP authentication", "checkbox",
          help="Check it and enter the user name and password of the address above."),
    Field("smtp_username", "SMTP user"),
    Field("smtp_password", "SMTP password", "password"),
    Field("pop_before_smtp", "POP before SMTP", "checkbox",
          help="For servers that need a POP login before sending."),
    Field("pop_host", "POP host"),
    Field("pop_port", "POP port", "number"),
    Field("pop_username", "POP user"),
    Field("pop_password", "POP password", "password"),
    Field("tls", "TLS/SSL", "select", choices=("starttls", "ssl", "none"),
          help="STARTTLS (port 587) or SSL (port 465) when the server needs TLS/SSL."),
    Field("local_hostname", "Local host name",
          help="The name given in EHLO; may be left empty."),
    Field("send_interval_ms", "Send interval (ms)", "number", required=True,
          help="Most servers cap the mails per period: with 12 a minute, 5,000 ms; leave a "
               "margin for other programs (6,000 ms: 10 a minute). Without an interval, "
               "every mail after the first few fails."),
    Field("quota_per_minute", "Quota per minute", "number"),
    Field("quota_per_hour", "Quota per hour", "number"),
    Field("quota_per_day", "Quota per day", "number"),
    Field("standby_account_ids", "Standby accounts (ids, in order)", "words"),
    Field("allowed_from", "Allowed From (addresses or @domains)", "words"),
    Field("bounce_protocol", "Bounce mailbox", "select", choices=("", "imap", "pop3"),
          help="Where bounces and complaints arrive (IMAP preferred); it may be the account's "
               "own mailbox. Read bounces are removed from it."),
    Field("bounce_host", "Bounce mailbox host"),
    Field("bounce_port", "Bounce mailbox port", "number",
          help="Empty: 993 or 143 for IMAP, 995 or 110 for POP3, by the TLS chosen."),
    Field("bounce_tls", "Bounce mailbox TLS/SSL", "select", choices=("ssl", "starttls", "none")),
    Field("bounce_username", "Bounce mailbox user"),
    Field("bounce_password", "Bounce mailbox password", "password"),
    Field("bounce_address", "VERP base address", "email",
          help="Optional: mail is sent with the envelope sender local+code@domain of this "
               "address, so that a bounce finds its recipient even without the original's "
               "headers. Only when the server lets the envelope sender differ from the login."),
    Field("bounce_poll_s", "Bounce mailbox check interval (s)", "number"),
    Field("is_default", "System common account", "checkbox"),
)
_BY_NAME = {field.name: field for field in ACCOUNT_FIELDS}


def account_values(values: dict[str, Any], partial: bool) -> dict[str, Any]:
    """The form's strings as the model's fields: a checkbox absent is False, an empty input
    is None (for a change: left out, so a password left empty keeps the stored one)."""
    out: dict[str, Any] = {}
    for field in ACCOUNT_FIELDS:
        raw = values.get(field.name)
        if field.kind == "checkbox":
            out[field.name] = raw in ("on", "true", True)
            continue
        text = raw.strip() if isinstance(raw, str) else raw
        if field.kind == "password":
            if text:
                out[field.name] = raw
            elif partial and values.get(f"{field.name}_clear") == "on":
                out[field.name] = None  # cleared; left empty: the stored one is kept
            continue
        if field.kind == "words":
            out[field.name] = text.split() if text else []
            continue
        if text in (None, ""):
            if not partial or field.name in ("from_name", "reply_to", "local_hostname",
                                             "quota_per_minute", "quota_per_hour",
                                             "quota_per_day", "smtp_username", "pop_host",
                                             "pop_port", "pop_username", "bounce_protocol",
                                             "bounce_host", "bounce_port", "bounce_username",
                                             "bounce_address"):
                out[field.name] = None
            continue
        out[field.name] = int(text) if field.kind == "number" and text.isdigit() else text
    if not partial:
        out = {key: value for key, value in out.items() if value is not None}
    return out


def errors_of(error: ValidationError | AccountError) -> dict[str, str]:
    """field name -> message ("" for errors of the whole form)."""
    found: dict[str, str] = {}
    if isinstance(error, ValidationError):
        for item in error.errors():
            name = next((str(p) for p in item["loc"] if str(p) in _BY_NAME), "")
            found.setdefault(name, item["msg"])
        return found
    detail = error.detail
    if isinstance(detail, list):
        for item in detail:
            loc = item.get("loc", []) if isinstance(item, dict) else []
            name = next((str(p) for p in loc if str(p) in _BY_NAME), "")
            message = item.get("msg", "") if isinstance(item, dict) else str(item)
            found.setdefault(name, message.split(": ", 1)[-1] if name else message)
    else:
        found[""] = str(detail)
    return found


def recipients_of(text: str) -> list[dict[str, str]]:
    """One recipient a line: `address` or `address, name` (or `name <address>`)."""
    recipients = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if "<" in line and line.endswith(">"):
            name, _, address = line[:-1].rpartition("<")
            recipients.append({"email": address.strip(), "name": name.strip().strip('"')})
        elif "," in line:
            address, name = (part.strip() for part in line.split(",", 1))
            recipients.append({"email": address, "name": name})
        else:
            recipients.append({"email": line})
    return [{k: v for k, v in r.items() if v} for r in recipients]
