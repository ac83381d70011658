"""Which setting is likely wrong, from a failed test mail's stage and the server's answer.

The seed's example: a 535 at login earns "a setting is wrong; here the user name or the
password". Each hint names the form's fields by their API names (smtp_host, smtp_port, tls,
...) and says what to change. `diagnose` picks the case; `hint` words it in English or Japanese.
"""

from services.config_svc.i18n import Lang, translator
from shared.smtp import SmtpEndpoint

# Each case's words in English, msgids of the service's catalog (i18n.py), which holds their
# Japanese; the placeholders are filled in after the translation.
_HINTS: dict[str, str] = {
    "pop_login": "The POP server refused the login: check pop_username and pop_password.",
    "pop_stls": (
        "The POP server does not offer STLS (STARTTLS on POP): check pop_port "
        "(POP3 over TLS is usually port 995, with tls set to ssl) and tls."),
    "pop_certificate": (
        "The POP server's certificate is not valid for {pop_host}: pop_host must be "
        "the name written in the server's certificate."),
    "pop_unreachable": (
        "Could not talk to the POP server {pop_host}:{pop_port}: check pop_host and "
        "pop_port (110, or 995 with tls set to ssl)."),
    "unknown_host": "The name {host} was not found in DNS: check smtp_host for typos.",
    "refused": (
        "Nothing accepts connections on {host}:{port}: check smtp_port (usually 587 "
        "for starttls, 465 for ssl, 25 without TLS) and smtp_host."),
    "timeout": (
        "No answer from {host}:{port} in time: check smtp_host and smtp_port, and that "
        "a firewall lets outgoing connections to port {port} through. A server that "
        "expects TLS from the first byte also stays silent: then set tls to ssl."),
    "timeout_ssl": (
        "No answer from {host}:{port} in time: check smtp_host and smtp_port, and that "
        "a firewall lets outgoing connections to port {port} through."),
    "implicit_tls_port": (
        "Port {port} usually expects TLS from the first byte (implicit TLS): set tls "
        "to ssl, or set smtp_port to 587 and keep starttls."),
    "connect_other": (
        "The server at {host}:{port} did not accept the connection: check smtp_host "
        "and smtp_port."),
    "starttls_not_offered": (
        "The server on port {port} does not offer STARTTLS, so the password was not "
        "sent. If it expects TLS from the first byte (usually port 465), set tls to "
        "ssl; otherwise check smtp_port (STARTTLS is usually on port 587)."),
    "certificate": (
        "The server's certificate is not valid for {host}: smtp_host must be the name "
        "written in the server's certificate (not an IP address or another alias), "
        "and the certificate must come from a trusted authority."),
    "plain_port_with_ssl": (
        "Port {port} does not speak TLS from the first byte: set tls to starttls "
        "(usual on port 587), or set smtp_port to the server's implicit-TLS port "
        "(usually 465)."),
    "tls_failed": "The TLS negotiation with {host}:{port} failed: check tls and smtp_port.",
    "tls_required": (
        "The server requires TLS: set tls to starttls (usually port 587) or ssl "
        "(usually port 465)."),
    "ehlo_refused": (
        "The server refused the EHLO greeting: check local_hostname (a fully qualified "
        "name such as mail.example.com) or leave it empty."),
    "login_refused": (
        "The server refused the login: check smtp_username and smtp_password (some "
        "providers require an app password)."),
    "login_temporary": (
        "The server could not check the login just now (a temporary failure): try "
        "again later; if it persists, check smtp_username and smtp_password."),
    "auth_not_offered_plain": (
        "The server offers no login (AUTH) on an unencrypted connection; many servers "
        "offer it only over TLS: set tls to starttls or ssl. If the server needs no "
        "login, turn smtp_auth off."),
    "auth_not_offered": (
        "The server offers no login (AUTH): if it needs none, turn smtp_auth off; "
        "otherwise check smtp_host and smtp_port (mail submission is usually on 587 or "
        "465)."),
    "auth_mechanism": (
        "The server offers no login method this service supports (PLAIN, LOGIN, "
        "CRAM-MD5): check smtp_host and smtp_port, or ask the mail provider."),
    "auth_required": (
        "The server requires a login: turn smtp_auth on and set smtp_username and "
        "smtp_password."),
    "smtputf8": (
        "The server cannot take addresses with non-ASCII characters (it offers no "
        "SMTPUTF8): use ASCII addresses for from_address and the recipient."),
    "sender_refused": (
        "The server refused the sender address: check from_address; this account may "
        "not be allowed to send as that address."),
    "relay_denied": (
        "The server does not relay mail for this connection: turn smtp_auth on with "
        "smtp_username and smtp_password (or POP before SMTP, if the provider uses it)."),
    "recipient_refused": "The server refused the recipient: check the `to` address.",
    "temporary": "The server answered with a temporary failure: try again in a few minutes.",
    "data_refused": (
        "The server refused the message itself (see its answer); the account's "
        "settings are likely right."),
    "connection_lost": (
        "The connection broke while sending: try again; if it keeps happening, check "
        "the network and firewalls between this service and {host}."),
    "local_hostname": (
        "local_hostname is not a valid host name: use a name such as mail.example.com "
        "(ASCII, no spaces) or leave it empty."),
    "unknown": "Check smtp_host, smtp_port and tls, and the server's answer above.",
}

_IMPLICIT_TLS_PORTS = {465}


def hint(stage: str, code: int | None, text: str, exception: str, endpoint: SmtpEndpoint,
         lang: Lang) -> str:
    """One or two sentences naming the setting most likely wrong, in `lang`."""
    wording = translator(lang)(_HINTS[diagnose(stage, code, text, exception, endpoint)])
    pop = endpoint.pop
    return wording.format(
        host=endpoint.host, port=endpoint.port,
        pop_host=pop.host if pop else "", pop_port=pop.port if pop else "",
    )


def diagnose(stage: str, code: int | None, text: str, exception: str,
             endpoint: SmtpEndpoint) -> str:
    """The key of the hint for this failure."""
    lowered = text.lower()
    timed_out = exception == "TimeoutError"
    if stage == "pop":
        return _pop(lowered, exception)
    if _tls_required(code, lowered) and endpoint.tls == "none":
        return "tls_required"  # e.g. 530 Must issue a STARTTLS command first
    if "local_hostname" in lowered or (stage == "ehlo" and exception == "UnicodeEncodeError"):
        return "local_hostname"
    if stage == "resolve":
        return "unknown_host"
    if stage == "connect":
        if timed_out:
            if endpoint.tls == "ssl":
                return "timeout_ssl"
            implicit = endpoint.port in _IMPLICIT_TLS_PORTS
            return "implicit_tls_port" if implicit else "timeout"
        if exception == "ConnectionRefusedError" or "refused" in lowered:
            return "refused"
        return "connect_other"
    if stage == "tls":
        if "did not offer starttls" in lowered:
            return "starttls_not_offered"
        if _certificate(lowered, exception):
            return "certificate"
        if endpoint.tls == "ssl":
            return "plain_port_with_ssl"  # e.g. [SSL: WRONG_VERSION_NUMBER] on port 587
        return "tls_failed"
    if stage == "ehlo":
        return "ehlo_refused"
    if stage == "auth":
        return _auth(code, lowered, endpoint)
    if code is None and (timed_out or "connection" in lowered or "eof" in lowered):
        return "connection_lost"
    if stage == "mail":
        return _mail(code, lowered)
    if stage == "rcpt":
        if "relay" in lowered:
            return "relay_denied"
        return "temporary" if _temporary(code) else "recipient_refused"
    if stage == "data":
        return "temporary" if _temporary(code) else "data_refused"
    return "unknown"


def _pop(lowered: str, exception: str) -> str:
    if "stls" in lowered:
        return "pop_stls"
    if exception == "error_proto" and lowered.startswith("-err"):
        return "pop_login"  # anything else (e.g. "220 ..."): not a POP server on that port
    if _certificate(lowered, exception):
        return "pop_certificate"
    return "pop_unreachable"


def _auth(code: int | None, lowered: str, endpoint: SmtpEndpoint) -> str:
    if "offered no auth" in lowered:
        return "auth_not_offered_plain" if endpoint.tls == "none" else "auth_not_offered"
    if "none of cram-md5" in lowered:
        return "auth_mechanism"
    if _temporary(code):
        return "login_temporary"
    return "login_refused"


def _mail(code: int | None, lowered: str) -> str:
    if "smtputf8" in lowered:
        return "smtputf8"
    if code == 530 or "authentication required" in lowered:
        return "auth_required"
    return "temporary" if _temporary(code) else "sender_refused"


def _tls_required(code: int | None, lowered: str) -> bool:
    # 530 "Must issue a STARTTLS command first"; 538 "Encryption required for requested
    # authentication mechanism"; some servers say "TLS required" with other codes.
    if code not in (530, 538, 550, 554):
        return False
    return "starttls" in lowered or "encryption required" in lowered or "tls required" in lowered


def _certificate(lowered: str, exception: str) -> bool:
    return exception in ("SSLCertVerificationError", "CertificateError") or "certificate" in lowered


def _temporary(code: int | None) -> bool:
    return code is not None and 400 <= code <= 499
