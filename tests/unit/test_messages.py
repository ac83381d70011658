import hashlib

import orjson
import pytest
from pydantic import ValidationError

from shared.messages import RECIPIENT_WINDOW, DeliveryRequest, MailSent

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


def _whole_dump_sha256(request: DeliveryRequest) -> bytes:
    # The definition of the canonical string, built at once.
    return hashlib.sha256(orjson.dumps(request.model_dump(mode="json"),
                                       option=orjson.OPT_SORT_KEYS)).digest()


@pytest.mark.parametrize("count", [1, RECIPIENT_WINDOW, RECIPIENT_WINDOW * 2 + 7])
def test_the_canonical_hash_is_that_of_the_whole_dump_hashed_by_windows(count: int) -> None:
    request = DeliveryRequest.model_validate({
        **VALID, "account_id": "acc-1", "priority": "high",
        "send_at": "2026-12-24T09:00:00+09:00", "headers": {"X-Campaign": "冬"},
        # A key of the metadata spelt like the field: the split must not fall on it.
        "metadata": {"recipients": [], "crm": {"id": 7, "tags": ["a", "b"]}},
        "recipients": [{"email": f"u{i}@example.com", "name": None if i % 3 else f"名 {i}",
                        "vars": {"plan": "gold", "n": str(i)} if i % 2 else {}}
                       for i in range(count)]})
    assert request.canonical_sha256() == _whole_dump_sha256(request)


def test_the_canonical_hash_ignores_the_spelling_not_the_content() -> None:
    spelt_otherwise = {"recipients": [{"vars": {"plan": "gold"}, "name": "山田 太郎",
                                       "email": "a@example.com"}],
                       "text": VALID["text"], "subject": VALID["subject"],
                       "delivery_id": VALID["delivery_id"], "priority": "normal", "headers": {}}
    first = DeliveryRequest.model_validate(VALID).canonical_sha256()
    assert DeliveryRequest.model_validate(spelt_otherwise).canonical_sha256() == first
    other = {**VALID, "recipients": [{**VALID["recipients"][0], "vars": {"plan": "silver"}}]}
    assert DeliveryRequest.model_validate(other).canonical_sha256() != first
