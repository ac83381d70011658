"""The registration and update form, and its "Send test mail" on the form's values."""

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ValidationError

from services.config_svc.errors import AccountError
from services.config_svc.schemas import AccountFields, AccountPatch, UnsavedTestMail
from services.config_svc.ui.common import Screens, Ui, language, secured
from services.config_svc.ui.forms import ACCOUNT_FIELDS, account_values, errors_of
from services.config_svc.ui.pages.account_detail import account_view
from shared.auth import User

router = APIRouter()


@router.get("/accounts/new")
async def new_account(request: Request, ui: Ui) -> Response:
    user = ui.user(request)
    if not user.is_admin:
        return ui.render(request, "error.html", status=403, user=user, code=403)
    return ui.render(request, "account_form.html", user=user, account=None,
                     values={"smtp_port": "587", "tls": "starttls", "send_interval_ms": "6000"},
                     errors={}, fields=ACCOUNT_FIELDS)


@router.post("/accounts/new")
async def create_account(request: Request, ui: Ui) -> Response:
    user, values = await ui.checked(request)
    try:
        fields = AccountFields.model_validate(account_values(values, partial=False))
        created = await ui.service.create(fields, user)
    except (ValidationError, AccountError) as error:
        return ui.render(request, "account_form.html", status=422, user=user, account=None,
                         values=values, errors=errors_of(error), fields=ACCOUNT_FIELDS)
    return await saved(ui, request, user, created.id, created.warnings)


async def saved(ui: Screens, request: Request, user: User, account_id: str,
                warnings: list[str]) -> Response:
    """The account's page; with the API's warnings said once when there are any."""
    if not warnings:
        return RedirectResponse(f"/ui/accounts/{account_id}", status_code=303)
    return await account_view(ui, request, user, account_id, warnings=warnings)


@router.get("/accounts/{account_id}/edit")
async def edit_account(request: Request, account_id: str, ui: Ui) -> Response:
    user = ui.user(request)
    account = await ui.service.get(account_id, user)
    values = {key: "" if value is None else str(value)
              for key, value in account.model_dump().items()}
    values["standby_account_ids"] = " ".join(account.standby_account_ids)
    values["allowed_from"] = " ".join(account.allowed_from)
    return ui.render(request, "account_form.html", user=user, account=account,
                     values=values, errors={}, fields=ACCOUNT_FIELDS)


@router.post("/accounts/{account_id}/edit")
async def update_account(request: Request, account_id: str, ui: Ui) -> Response:
    user, values = await ui.checked(request)
    account = await ui.service.get(account_id, user)
    try:
        patch = AccountPatch.model_validate(account_values(values, partial=True))
        updated = await ui.service.update(account_id, patch, user)
    except (ValidationError, AccountError) as error:
        return ui.render(request, "account_form.html", status=422, user=user,
                         account=account, values=values, errors=errors_of(error),
                         fields=ACCOUNT_FIELDS)
    return await saved(ui, request, user, account_id, updated.warnings)


@router.post("/test-mail")
async def test_mail(request: Request, ui: Ui) -> Response:
    """The form's values, saved or not, as JSON from ui.js; the CSRF token in a header."""
    user = ui.user(request)
    ui.sessions.check_csrf(request, request.headers.get("x-csrf-token"))
    values = orjson.loads(await request.body())
    lang = language(request)
    test_mails = ui.service.test_mails
    try:
        form = {**account_values(values, partial=False), "to": values.get("to", "")}
        if values.get("account_id"):  # a saved account's form: its stored passwords
            report = await test_mails.edited(str(values["account_id"]), form, lang, user)
        else:
            report = await test_mails.unsaved(UnsavedTestMail.model_validate(form), lang, user)
    except (ValidationError, AccountError) as error:
        return secured(JSONResponse({"ok": False, "errors": errors_of(error)}, status_code=422))
    return secured(JSONResponse(report.model_dump(mode="json")))
