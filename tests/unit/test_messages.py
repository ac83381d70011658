import pytest
from pydantic import ValidationError

from shared.messages import DeliveryRequest, MailSent

VALID = {
    "delivery_id": "crm-2026-000123",
    "subject": "{{name}} 様 11月のお知らせ",
    "text": "{{name}} 様",
    "recipients": [{"email": "a@example.com", "name": "山田 太郎", "vars": {"plan": "gold"}}],
}


def test_the_contract_example_is_a_valid_request() -> None:
    request = DeliveryRequest.model_validate(VALID)
    assert request.account_id is None
    assert request.recipients[0].vars == {"plan": "gold"}


@pytest.mark.parametrize(
    "change",
    [
        {"delivery_id": "has space"},
        {"delivery_id": "x" * 201},
        {"subject": "two\nlines"},
        {"text": None},
        {"recipients": []},
        {"headers": {"X-Bad": "a\r\nBcc: victim@example.com"}},
        {"metadata": {"blob": "x" * 5000}},
        {"unexpected": 1},
    ],
)
def test_requests_breaking_the_contract_are_refused(change: dict) -> None:
    with pytest.raises(ValidationError):
        DeliveryRequest.model_validate({**VALID, **change})


def test_events_carry_type_id_and_utc_time() -> None:
    event = MailSent(delivery_id="d", account_id="a", recipient="r@example.com",
                     message_id="<m@example.com>", smtp_code=250, attempts=1)
    dumped = event.model_dump(mode="json")
    assert dumped["type"] == "mail.sent"
    assert len(dumped["event_id"]) == 32
    assert dumped["occurred_at"].endswith("Z")
