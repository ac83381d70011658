"""A provider's quota reply pauses the account instead of failing its recipients: at MAIL,
RCPT or the end of DATA, the account stops (`account.paused`, reason `quota`, with
`resumes_at` and the window), resumes by itself, and every mail arrives after it."""

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.dispatcher_fixtures import request_body
from tests.integration.sender_fixtures import sender_on
from tests.support.smtp_servers import smtp_server

GMAIL_QUOTA = ("550 5.4.5 Daily user sending quota exceeded. Learn more at "
               "https://support.google.com/a/answer/166852")


@pytest.fixture
def sender_overrides() -> dict:
    return {"quota_wait_s": 1}


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
async def test_a_quota_reply_pauses_the_account_and_every_mail_goes_after(
    start_sender: Any, stage: str,
) -> None:
    async with smtp_server(refusal=(stage, GMAIL_QUOTA), refusals=1) as server:
        stack = await sender_on(start_sender, server)
        recipients = [{"email": f"q{i}@example.com", "name": f"n{i}", "vars": {"plan": "p"}}
                      for i in range(3)]
        body = request_body(account_id=stack.account_id, recipients=recipients)
        await stack.dispatcher.publish_request(body)
        paused = await stack.wait_event(lambda e: e["type"] == "account.paused")
        completed = await stack.wait_event(
            lambda e: e["type"] == "delivery.completed"
            and e["delivery_id"] == body["delivery_id"], timeout=30)

    assert paused["reason"] == "quota"
    assert paused["window"] == "day"
    assert paused["smtp_code"] == 550 and "quota exceeded" in paused["smtp_message"]
    resumes_at = datetime.fromisoformat(paused["resumes_at"])
    assert 0 < (resumes_at - datetime.fromisoformat(paused["occurred_at"])).total_seconds() < 5
    assert resumes_at <= datetime.now(UTC)
    assert (completed["sent"], completed["failed"]) == (3, 0)
    assert not stack.of_type("mail.failed") and not stack.of_type("mail.deferred")
    assert len(stack.of_type("account.resumed")) == 1
    assert sorted(m.rcpt_tos[0] for m in server.messages) == [r["email"] for r in recipients]
