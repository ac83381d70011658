"""The screens: sign in and out, the accounts list, the registration form with "Send test
mail", an account's page, and a delivery registered by hand with its status page. They call
the same service layer as the API (no HTTP round trip to config_svc itself); deliveries go
through the dispatcher's API with the signed-in user's token, so its rules hold."""

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.config_svc.accounts import AccountService
from services.config_svc.ui.common import HERE, Screens
from services.config_svc.ui.dispatcher import Dispatcher
from services.config_svc.ui.pages import (
    account_detail,
    account_form,
    accounts,
    deliveries,
    errors,
    signin,
)
from services.config_svc.ui.session import Sessions

# In this order: /accounts/new and /accounts/{account_id}/edit are matched before
# /accounts/{account_id} and /accounts/{account_id}/{action} would take them.
PAGES = (signin, accounts, account_form, account_detail, deliveries)


def mount_ui(app: FastAPI, service: AccountService, sessions: Sessions,
             dispatcher_url: str) -> Callable[[], Awaitable[None]]:
    """The screens under /ui; returns what closes their connections to the dispatcher, for
    when the server has stopped (left open, they only end with the process)."""
    dispatcher = Dispatcher(dispatcher_url)
    app.state.screens = Screens(service, sessions, dispatcher)
    for page in PAGES:
        app.include_router(page.router, prefix="/ui")
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    errors.install(app)
    return dispatcher.close
