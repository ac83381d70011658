"""docs/asyncapi.yaml: generated from the message models (stale fails), valid AsyncAPI 3.0.0
(the specification's JSON Schema, committed: docs/asyncapi-schema/), every example valid."""

import copy
import json
from pathlib import Path

import jsonschema
import yaml

from shared.messages import MESSAGE_TYPES
from tools.asyncapi import DEFAULT_PATH, examples, render

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "docs" / "asyncapi-schema" / "3.0.0-without-id.json"


def errors(document: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    return [error.message for error in validator.iter_errors(document)]


def test_the_committed_document_is_what_the_models_give() -> None:
    committed = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(render())), (
        "docs/asyncapi.yaml is stale: run `make schemas`")


def test_it_is_valid_asyncapi_3() -> None:
    assert errors(yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))) == []


def test_the_check_bites() -> None:
    broken = copy.deepcopy(render())
    broken["operations"]["receiveDeliveryRequest"]["action"] = "publish"  # AsyncAPI 2's word
    del broken["channels"]["deliveryRequests"]["address"]
    broken["channels"]["deliveryRequests"]["subscribe"] = {}
    assert errors(json.loads(json.dumps(broken)))


def test_every_message_is_there_with_an_example_its_model_accepts() -> None:
    document = render()
    messages = document["components"]["messages"]
    assert set(messages) == {model.__name__ for model in MESSAGE_TYPES}
    for model, example in examples().items():
        payload = messages[model.__name__]["examples"][0]["payload"]
        assert model.model_validate(payload) == example
    channels = document["channels"]
    assert channels["deliveryRequests"]["bindings"]["amqp"]["exchange"]["name"] == \
        "mail.requests"
    assert channels["mail_sent"]["address"] == "mail.sent"
