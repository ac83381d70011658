"""The admin screens in a real Chromium (Debian's, driven by Playwright), against config_svc
and the dispatcher served over HTTP on loopback, the real broker and database, and aiosmtpd
servers playing the providers."""

import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from services.config_svc.api import create_app as accounts_app
from services.config_svc.ui.routes import mount_ui
from services.config_svc.ui.session import Sessions
from shared.auth import TokenVerifier
from shared.http import Health, HttpServer
from tests.integration.accounts_fixtures import (
    JWT_SECRET,
    AccountsApi,
    account_body,
    auth,
    token,
)
from tests.integration.sender_fixtures import sender_on
from tests.support.processes import free_port
from tests.support.smtp_servers import auth_server, smtp_server

CHROMIUM = "/usr/bin/chromium"
# As the machine's notes say: without the background-networking flags Chromium keeps trying
# hosts this closed network refuses.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
USER = "news@shop.example.com"
PASSWORD = "right-password"


SHOTS = os.environ.get("MAIL_SCREENSHOTS_DIR")  # `make screenshots`: docs/ui/


async def shot(page: Page, name: str) -> None:
    """A PNG of the screen for the README, when `make screenshots` runs the tests."""
    if SHOTS:
        await page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


@dataclass
class Site:
    url: str
    browser: Browser
    api: AccountsApi

    async def page(self, sub: str = "admin", admin: bool = True, lang: str = "en") -> Page:
        context = await self.browser.new_context(locale=lang)
        page = await context.new_page()
        await self.sign_in(page, token(sub, admin=admin))
        return page

    async def sign_in(self, page: Page, jwt: str) -> None:
        await page.goto(f"{self.url}/ui/signin")
        await page.fill("#token", jwt)
        await page.click("button[type=submit] >> nth=-1")
        await page.wait_for_url(re.compile(r".*/ui/accounts$"))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: `make test` installs it"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        await browser.close()


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    port = free_port()
    server = HttpServer(app, "127.0.0.1", port)
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


@asynccontextmanager
async def ui_site(accounts_api: AccountsApi, browser: Browser,
                  dispatcher_url: str = "http://127.0.0.1:9") -> AsyncIterator[Site]:
    verifier = TokenVerifier("HS256", JWT_SECRET)
    app = accounts_app(accounts_api.service, verifier, Health(), 65536)
    close = mount_ui(app, accounts_api.service, Sessions(verifier, b"k" * 32), dispatcher_url)
    try:
        async with served(app) as url:
            yield Site(url, browser, accounts_api)
    finally:
        await close()


@pytest.fixture
async def site(accounts_api: AccountsApi, browser: Browser) -> AsyncIterator[Site]:
    async with ui_site(accounts_api, browser) as running:
        yield running


async def test_sign_in_and_out_and_a_bad_token_is_refused(site: Site) -> None:
    page = await site.page()
    await expect(page.locator("h1")).to_contain_text("Mail accounts")
    cookies = await page.context.cookies()
    session = next(c for c in cookies if c["name"] == "mail_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    await page.click("text=Sign out")
    await page.wait_for_url(re.compile(r".*/ui/signin$"))
    await page.goto(f"{site.url}/ui/accounts")
    await page.wait_for_url(re.compile(r".*/ui/signin$"))
    await shot(page, "signin")
    await page.fill("#token", "not-a-token")
    await page.click("button[type=submit] >> nth=-1")
    await expect(page.locator(".error")).to_contain_text("not valid")


async def test_the_test_mail_shows_the_servers_535_then_mail_sent_and_the_account_is_saved(
    site: Site,
) -> None:
    async with auth_server({USER: PASSWORD}) as server:
        page = await site.page()
        await page.click("text=+ New")
        name = f"Newsletter {uuid.uuid4().hex[:6]} Tokyo"
        await page.fill("#f-name", name)
        await page.fill("#f-from_address", USER)
        await page.fill("#f-smtp_host", server.host)
        await page.fill("#f-smtp_port", str(server.port))
        await page.select_option("#f-tls", "none")
        await page.check("#f-smtp_auth")
        await page.fill("#f-smtp_username", USER)
        await page.fill("#f-smtp_password", "wrong-password")
        await page.click("#test-mail-open")
        await page.fill("#test-mail-to", "check@example.com")
        await page.click("#test-mail-send")
        result = page.locator("#test-mail-result")
        await expect(result).to_contain_text("auth")
        await expect(result.locator(".verbatim")).to_contain_text("535")
        await expect(result).to_contain_text("Hint")
        await shot(page, "test-mail-failed")
        await page.click("#test-mail-close")

        await page.fill("#f-smtp_password", PASSWORD)
        await page.click("#test-mail-open")
        await page.click("#test-mail-send")
        await expect(result.locator(".ok")).to_have_text("Mail was sent")
        await page.click("#test-mail-close")
        await page.click("button[type=submit] >> text=Register")
        await expect(page.locator("h1")).to_contain_text(name)
        await shot(page, "account")
        # On the saved account's form, the password left empty is the stored one.
        await page.click("main >> text=Edit")
        await expect(page.locator("#f-smtp_password")).to_have_value("")
        await page.click("#test-mail-open")
        await page.fill("#test-mail-to", "again@example.com")
        await page.click("#test-mail-send")
        await expect(result.locator(".ok")).to_have_text("Mail was sent")
        await page.click("#test-mail-close")
        await page.click("a.button >> text=Cancel")
    assert [m.rcpt_tos for m in server.messages] == [["check@example.com"],
                                                      ["again@example.com"]]

    # Found by two words, with AND and with OR.
    await page.goto(f"{site.url}/ui/accounts?q=Tokyo+Newsletter&match=all")
    await expect(page.locator("tbody")).to_contain_text(name)
    await page.goto(f"{site.url}/ui/accounts?q=Tokyo+nothing-like-it&match=all")
    await expect(page.locator("tbody")).not_to_contain_text(name)
    await page.goto(f"{site.url}/ui/accounts?q=Tokyo+nothing-like-it&match=any")
    await expect(page.locator("tbody")).to_contain_text(name)
    await shot(page, "accounts")

    # Pause and resume from its page.
    await page.click(f"text={name}")
    await page.click("#pause-toggle")
    await expect(page.locator("#state")).to_contain_text("Paused")
    await page.click("#pause-toggle")
    await expect(page.locator("#state")).to_contain_text("Running")


async def test_a_user_sees_no_new_button_nor_anothers_personal_account(site: Site) -> None:
    answer = await site.api.client.post(
        "/v1/accounts", json=account_body(name="Suzuki's own", personal=True),
        headers=auth("suzuki", admin=True))  # an administrator's personal account
    assert answer.status_code == 201, answer.text
    personal = answer.json()
    page = await site.page("tanaka", admin=False)
    await expect(page.locator("h1")).to_contain_text("Mail accounts")
    assert await page.locator("text=+ New").count() == 0
    await page.goto(f"{site.url}/ui/accounts/{personal['id']}")
    await expect(page.locator(".error")).to_contain_text("Not found")
    answer = await page.goto(f"{site.url}/ui/accounts/new")
    assert answer is not None and answer.status == 403


async def test_a_form_posted_without_its_csrf_token_is_refused(site: Site) -> None:
    account = await site.api.create(name="csrf target")
    page = await site.page()
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    async with httpx.AsyncClient(base_url=site.url, cookies=cookies) as client:
        answer = await client.post(f"/ui/accounts/{account['id']}/pause", data={})
        assert answer.status_code == 403
        forged = await client.post(f"/ui/accounts/{account['id']}/pause",
                                   data={"csrf": "0" * 64})
        assert forged.status_code == 403
    row = await site.api.pool.fetchrow("SELECT paused FROM accounts WHERE id = $1",
                                       account["id"])
    assert row["paused"] is False


async def test_an_account_named_like_a_script_renders_inert(site: Site) -> None:
    name = f"<script>alert(1)</script> {uuid.uuid4().hex[:6]}"
    await site.api.create(name=name)
    page = await site.page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await page.goto(f"{site.url}/ui/accounts?q={name.split()[-1]}")
    await expect(page.locator("tbody")).to_contain_text("<script>alert(1)</script>")
    assert dialogs == []
    assert await page.locator("tbody script").count() == 0


async def test_japanese_and_english_labels(site: Site) -> None:
    page = await site.page(lang="ja-JP")
    await expect(page.locator("h1")).to_contain_text("メールアカウント")
    await page.click("text=+ 新規")
    await expect(page.locator("label[for=f-name]")).to_contain_text("メールアカウント名")
    await shot(page, "form-ja")
    await expect(page.locator("label[for=f-smtp_host]")).to_contain_text("SMTPホスト")
    await page.click("header >> text=EN")
    await expect(page.locator("label[for=f-name]")).to_contain_text("Account name")


async def test_a_delivery_registered_by_hand_reaches_completed_on_its_page(
    accounts_api: AccountsApi, browser: Browser, start_sender: Any,
) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server, send_interval_ms=200)
        async with served(stack.dispatcher.app()) as dispatcher_url, \
                ui_site(accounts_api, browser, dispatcher_url) as site:
            page = await site.page("tanaka", admin=False)
            await page.click("text=Register a delivery")
            await page.select_option("#d-account", stack.account_id)
            subject = f"Hello {{{{name}}}} {uuid.uuid4().hex[:6]}"
            await page.fill("#d-subject", subject)
            await page.fill("#d-text", "Dear {{name}}, see you soon.")
            await page.fill("#d-recipients", "a@example.com, 山田\nb@example.com, 鈴木\n"
                                             "c@example.com, 田中")
            await shot(page, "delivery-form")
            await page.click("main button[type=submit]")
            await expect(page.locator("#delivery-state")).to_contain_text(
                "completed", timeout=20_000)
            await expect(page.locator("#count-sent")).to_have_text("3")
            await shot(page, "delivery")
            await page.click("header >> text=Delivery status")
            row = page.locator("tbody tr", has_text=subject)
            await expect(row).to_contain_text("completed")
            await page.select_option("#filter-state", "scheduled")
            await page.click("main button[type=submit]")
            await expect(page.locator("tbody")).not_to_contain_text(subject)
            await shot(page, "deliveries")
    assert sorted(m.rcpt_tos[0] for m in server.messages) == [
        "a@example.com", "b@example.com", "c@example.com"]


async def test_a_field_error_is_shown_in_place_and_the_apis_warnings_after_saving(
    site: Site,
) -> None:
    page = await site.page()
    await page.click("text=+ New")
    await page.fill("#f-name", f"warned {uuid.uuid4().hex[:6]}")
    await page.fill("#f-from_address", "not an address")
    await page.fill("#f-smtp_host", "smtp.example.com")
    await page.fill("#f-smtp_port", "465")
    await page.click("button[type=submit] >> text=Register")
    error = page.locator("#f-from_address-error")
    await expect(error).to_be_visible()
    await expect(page.locator("#f-from_address")).to_have_attribute("aria-invalid", "true")
    await page.fill("#f-from_address", "news@example.com")
    await page.click("button[type=submit] >> text=Register")
    await expect(page.locator(".warnings")).to_contain_text("465")


async def test_the_bounce_mailbox_is_set_on_the_form_and_its_password_kept_on_an_edit(
    site: Site,
) -> None:
    page = await site.page()
    await page.click("text=+ New")
    name = f"bounces {uuid.uuid4().hex[:6]}"
    await page.fill("#f-name", name)
    await page.fill("#f-from_address", "news@example.com")
    await page.fill("#f-smtp_host", "smtp.example.com")
    await page.fill("#f-smtp_port", "587")
    await page.select_option("#f-bounce_protocol", "imap")
    await page.fill("#f-bounce_host", "imap.example.com")
    await page.fill("#f-bounce_username", "bounces@example.com")
    await page.click("button[type=submit] >> text=Register")
    # Without its password the mailbox cannot be read: said in place.
    await expect(page.locator("#f-bounce_password-error")).to_be_visible()
    await page.fill("#f-bounce_password", "mailbox-secret")
    await page.fill("#f-bounce_address", "bounces+x@example.com")
    await page.click("button[type=submit] >> text=Register")
    await expect(page.locator("#f-bounce_address-error")).to_contain_text("+")
    await page.fill("#f-bounce_password", "mailbox-secret")
    await page.fill("#f-bounce_address", "bounces@example.com")
    await page.click("button[type=submit] >> text=Register")
    await expect(page.locator("h1")).to_contain_text(name)

    row = await site.api.pool.fetchrow("SELECT * FROM accounts WHERE name = $1", name)
    assert (row["bounce_protocol"], row["bounce_host"], row["bounce_port"], row["bounce_tls"],
            row["bounce_address"], row["bounce_poll_s"]) == (
        "imap", "imap.example.com", None, "ssl", "bounces@example.com", 300)
    stored = row["bounce_password_enc"]
    assert site.api.box.decrypt(stored, account_id=str(row["id"]),
                                field="bounce_password") == "mailbox-secret"

    await page.click("main >> text=Edit")
    await expect(page.locator("#f-bounce_password")).to_have_value("")
    await page.fill("#f-bounce_poll_s", "60")
    await page.click("button[type=submit] >> text=Update")
    await expect(page.locator("h1")).to_contain_text(name)
    row = await site.api.pool.fetchrow("SELECT * FROM accounts WHERE name = $1", name)
    assert row["bounce_poll_s"] == 60 and row["bounce_password_enc"] == stored
