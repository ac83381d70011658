"""The test mail of an account, for administrators: a saved account, a saved account's form as
edited, or a form not saved yet; each through `testmail.run_test_mail`."""

import ssl
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.config_svc import repository
from services.config_svc.checks import checked_fields
from services.config_svc.errors import NotFound, require_admin
from services.config_svc.schemas import UnsavedTestMail
from services.config_svc.testmail import TestMailReport, run_test_mail
from shared.accounts import smtp_endpoint
from shared.auth import User
from shared.crypto import SecretBox
from shared.smtp import PopLogin, SmtpEndpoint


@dataclass(frozen=True)
class TestMailConfig:
    ssl_context: ssl.SSLContext
    timeout_s: float


class AccountTestMail:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox, config: TestMailConfig) -> None:
        self._pool = pool
        self._box = box
        self._config = config

    async def saved(self, account_id: str, to: str, lang: str, user: User) -> TestMailReport:
        require_admin(user)
        row = await repository.get(self._pool, account_id)
        if row is None:
            raise NotFound(f"no account {account_id}")
        return await run_test_mail(
            smtp_endpoint(row, self._box), from_address=row["from_address"],
            from_name=row["from_name"], reply_to=row["reply_to"], to=to, lang=lang,
            ssl_context=self._config.ssl_context, timeout_s=self._config.timeout_s,
        )

    async def edited(self, account_id: str, values: dict[str, Any], lang: str,
                     user: User) -> TestMailReport:
        """A saved account's form, changed or not: a password left empty there is the stored
        one."""
        require_admin(user)
        row = await repository.get(self._pool, account_id)
        if row is None:
            raise NotFound(f"no account {account_id}")
        values = dict(values)
        for field, column in repository.SECRETS.items():
            if not values.get(field) and row[column]:
                values[field] = self._box.decrypt(row[column], account_id=account_id,
                                                  field=field)
        return await self.unsaved(UnsavedTestMail.model_validate(values), lang, user)

    async def unsaved(self, fields: UnsavedTestMail, lang: str, user: User) -> TestMailReport:
        require_admin(user)
        checked_fields(fields)
        return await run_test_mail(
            _endpoint(fields), from_address=fields.from_address, from_name=fields.from_name,
            reply_to=fields.reply_to, to=fields.to, lang=lang,
            ssl_context=self._config.ssl_context, timeout_s=self._config.timeout_s,
        )


def _endpoint(fields: UnsavedTestMail) -> SmtpEndpoint:
    pop = None
    if fields.pop_before_smtp:
        pop = PopLogin(host=fields.pop_host, port=fields.pop_port,
                       username=fields.pop_username,
                       password=fields.pop_password.get_secret_value())
    return SmtpEndpoint(
        host=fields.smtp_host, port=fields.smtp_port, tls=fields.tls,
        local_hostname=fields.local_hostname,
        username=fields.smtp_username if fields.smtp_auth else None,
        password=fields.smtp_password.get_secret_value() if fields.smtp_auth else None,
        pop=pop,
    )
