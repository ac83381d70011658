"""The dispatcher's decoding of a request: the object read key by key, its recipients built
by pydantic a window at a time; the result and the refusals are those of one strict parse."""

import json

import orjson
import pytest

from services.dispatcher.decode import decode_request
from services.dispatcher.rejection import INVALID_REQUEST, TOO_LARGE, Rejection
from shared.messages import MAX_RECIPIENTS, DeliveryRequest
from shared.messages import RECIPIENT_WINDOW as WINDOW

LIMIT = 32 << 20


def body(count: int = 50, **changes: object) -> dict:
    request = {
        "delivery_id": "crm-1", "subject": "{{name}} 様", "text": "plan {{plan}}",
        "recipients": [{"email": f"u{i}@example.com", "name": f"山田 {i}",
                        "vars": {"plan": "gold"}} for i in range(count)],
        "metadata": {"crm": {"delivery_id": "nested", "n": 1.5, "list": [1, None, True]}},
        "send_at": "2026-12-24T09:00:00+09:00",
    }
    return {**request, **changes}


def rejection(raw: bytes) -> Rejection:
    with pytest.raises(Rejection) as caught:
        decode_request(raw, "message-1", LIMIT)
    return caught.value


@pytest.mark.parametrize("count", [1, WINDOW - 1, WINDOW, WINDOW + 1, 2 * WINDOW + 7])
def test_the_model_is_the_one_a_whole_parse_gives(count: int) -> None:
    request = body(count)
    expected = DeliveryRequest.model_validate(json.loads(json.dumps(request)))
    assert decode_request(orjson.dumps(request), None, LIMIT) == expected
    spaced = json.dumps(request, indent=3, ensure_ascii=True).encode()  # escapes, new lines
    assert decode_request(spaced, None, LIMIT) == expected


@pytest.mark.parametrize("raw", [
    b'{"delivery_id": "d", "recipients": [{"email": "a@b.c", "email": "x@y.z"}]}',
    b'{"delivery_id": "d", "recipients": [{"email": "a@b.c", "vars": {"a": "1", "a": "2"}}]}',
    b'{"delivery_id": "d", "metadata": {"a": {"b": 1, "b": 2}}}',
    b'{"delivery_id": "d", "recipients": [], "recipients": []}',
    b'{"delivery_id": "d", "metadata": {"n": Infinity}}',
    b'{"delivery_id": "d", "recipients": [{"email": "a@b.c", "n": NaN}]}',
    b'{"delivery_id": "d", "metadata": {"n": 1' + b"0" * 40 + b"}}",
    b'{"delivery_id": "d", "recipients": [{"email": "a@b.c"},]}',
    b'{"delivery_id": "d", "recipients": [{"email": "a@b.c"} {"email": "x@y.z"}]}',
    b'{"delivery_id": "d", "subject" "s"}',
    b'{"delivery_id": "d",}',
    b'{"delivery_id": "d"} {}',
    b'{"delivery_id": "d", "recipients": [' + b"[" * 100_000,
])
def test_malformed_json_anywhere_is_refused_and_the_id_still_named(raw: bytes) -> None:
    refused = rejection(raw)
    assert (refused.reason, refused.delivery_id) == (INVALID_REQUEST, "d")
    assert refused.detail.startswith("not valid JSON")


def test_a_bad_recipient_is_named_by_its_place_in_the_whole_list() -> None:
    request = body(2 * WINDOW + 10)
    request["recipients"][WINDOW + 234]["email"] = "a"
    refused = rejection(orjson.dumps(request))
    assert (refused.reason, refused.delivery_id) == (INVALID_REQUEST, "crm-1")
    assert refused.detail.startswith(f"recipients.{WINDOW + 234}.email: ")


def test_bad_recipients_are_all_counted_and_the_request_named_by_its_own_id() -> None:
    request = body(3 * WINDOW)
    for index in (10, 2 * WINDOW, *range(2 * WINDOW + 1, 3 * WINDOW)):
        request["recipients"][index]["email"] = "a"
    request["recipients"][0]["vars"]["delivery_id"] = "evil"  # first in the body's text
    request = {"recipients": request.pop("recipients"), **request}  # the request's id after
    refused = rejection(orjson.dumps(request))
    assert (refused.reason, refused.delivery_id) == (INVALID_REQUEST, "crm-1")
    assert refused.detail.startswith("recipients.10.email: ")
    assert f"recipients.{2 * WINDOW}.email: " in refused.detail
    assert refused.detail.endswith(f"; and {WINDOW + 1 - 5} more")


def test_a_syntax_error_after_a_bad_recipient_is_reported_as_such() -> None:
    raw = b'{"delivery_id": "d", "recipients": [{"email": "a"}], "subject": }'
    assert rejection(raw).detail.startswith("not valid JSON")


def test_a_json_fault_in_a_recipient_names_no_position_of_its_window() -> None:
    raw = json.dumps(body(recipients=[{"email": "a@example.com", "name": "\ud800"}])).encode()
    refused = rejection(raw)
    assert refused.detail.startswith("recipients: Invalid JSON")
    assert "column" not in refused.detail


def test_a_rejected_model_names_its_own_id_not_a_nested_one() -> None:
    refused = rejection(orjson.dumps(body(0, delivery_id="top-1")))
    assert (refused.reason, refused.delivery_id) == (INVALID_REQUEST, "top-1")
    assert "recipients" in refused.detail


def test_more_recipients_than_allowed_is_too_large_even_with_bad_ones() -> None:
    recipients = [{"email": f"u{i}@x.jp"} for i in range(MAX_RECIPIENTS + 1)]
    recipients[5]["email"] = "a"
    refused = rejection(orjson.dumps(body(0, recipients=recipients)))
    assert (refused.reason, refused.delivery_id) == (TOO_LARGE, "crm-1")


@pytest.mark.parametrize("changes", [
    {"metadata": {"n": 10**30}},
    {"metadata": {"s": "\ud800"}},
    {"subject": "\udc00 hello"},
    {"text": "\ud800"},
    {"requested_by": "crm\udfff"},
    {"recipients": [{"email": "a@example.com", "name": "\ud800"}]},
])
def test_what_the_stores_cannot_take_is_a_rejection_not_a_crash(changes: dict) -> None:
    raw = json.dumps(body(**changes)).encode()  # stdlib: it writes both
    refused = rejection(raw)
    assert (refused.reason, refused.delivery_id) == (INVALID_REQUEST, "crm-1")
