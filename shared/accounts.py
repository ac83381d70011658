"""Reading an account as the services that use it need it: its SMTP endpoint, secrets
decrypted. The `accounts` table belongs to config_svc; others only read it."""

from collections.abc import Mapping
from typing import Any

from shared.crypto import SecretBox
from shared.smtp import PopLogin, SmtpEndpoint


def smtp_endpoint(row: Mapping[str, Any], box: SecretBox) -> SmtpEndpoint:
    """The endpoint of a stored account row; raises UndecryptableSecret naming the account."""
    account_id = str(row["id"])
    password = None
    if row["smtp_auth"] and row["smtp_password_enc"]:
        password = box.decrypt(row["smtp_password_enc"], account_id=account_id,
                               field="smtp_password")
    pop = None
    if row["pop_before_smtp"]:
        pop = PopLogin(
            host=row["pop_host"], port=row["pop_port"], username=row["pop_username"],
            password=box.decrypt(row["pop_password_enc"], account_id=account_id,
                                 field="pop_password"),
        )
    return SmtpEndpoint(
        host=row["smtp_host"], port=row["smtp_port"], tls=row["tls"],
        local_hostname=row["local_hostname"],
        username=row["smtp_username"] if row["smtp_auth"] else None,
        password=password, pop=pop,
    )
