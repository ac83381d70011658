"""The AsyncAPI 3.0 document of the contract, generated from the message models
(`make schemas` writes docs/asyncapi.yaml; a test fails when it is stale).

What it describes is what the services do on the broker: they receive delivery requests
(`mail.requests`, `delivery.request`), send one job per recipient to `mail.send` (routing key
= account id) and receive them from the account's queue, and send every event to
`mail.events` (routing key = the event's type). Every message has its JSON Schema (the
models', their shared parts under components.schemas) and an example.
"""

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from shared.messages import (
    AccountCreated,
    AccountDeleted,
    AccountPaused,
    AccountPublic,
    AccountResumed,
    AccountThrottled,
    AccountUpdated,
    AccountWarning,
    DeliveryAccepted,
    DeliveryCancel,
    DeliveryCancelled,
    DeliveryCompleted,
    DeliveryRejected,
    DeliveryRequest,
    MailBounced,
    MailDeferred,
    MailFailed,
    MailSent,
    Recipient,
    SendJob,
)
from shared.topology import Topology

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
AMQP_BINDING = "0.3.0"
_AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
_ACCOUNT = "5d1e2f3a-4b5c-6d7e-8f9a-0b1c2d3e4f5a"
_STANDBY = "7a8b9c0d-1e2f-4a5b-8c6d-7e8f9a0b1c2d"
_META = {"crm_delivery": 123}
_GENERATOR = "python -m tools.asyncapi"


def _account() -> AccountPublic:
    return AccountPublic(
        id=_ACCOUNT, name="Shop news", personal=False, owner=None,
        from_address="news@shop.example.com", from_name="Shop", reply_to=None,
        smtp_host="smtp.example.com", smtp_port=587, smtp_auth=True,
        smtp_username="news@shop.example.com", pop_before_smtp=False, pop_host=None,
        pop_port=None, pop_username=None, tls="starttls", local_hostname=None,
        send_interval_ms=6000, quota_per_day=2000, is_default=True, paused=False,
        created_by="admin", created_at=_AT, updated_by=None, updated_at=None)


def examples() -> dict[type[BaseModel], BaseModel]:
    """One example of every message, valid by its own model."""
    common = {"event_id": "3f2a9c1e8b7d4c6a9e0f1a2b3c4d5e6f", "occurred_at": _AT}
    delivery = {**common, "delivery_id": "crm-2026-000123", "metadata": _META}
    recipient = {**delivery, "account_id": _ACCOUNT, "recipient": "tanaka@example.com"}
    return {
        DeliveryRequest: DeliveryRequest(
            delivery_id="crm-2026-000123", account_id=_ACCOUNT, requested_by="tanaka",
            subject="{{name}} 様 11月のお知らせ", text="{{name}} 様\n\nplan {{plan}}",
            recipients=[Recipient(email="tanaka@example.com", name="田中 太郎",
                                  vars={"plan": "gold"})],
            metadata=_META, priority="high", expires_at=_AT),
        DeliveryCancel: DeliveryCancel(delivery_id="crm-2026-000123", requested_by="tanaka"),
        SendJob: SendJob(job_id="crm-2026-000123:0", delivery_id="crm-2026-000123",
                         account_id=_ACCOUNT, index=0, email="tanaka@example.com",
                         name="田中 太郎", vars={"plan": "gold"}, first_queued_at=_AT),
        DeliveryAccepted: DeliveryAccepted(**delivery, account_id=_ACCOUNT, recipients=1),
        DeliveryRejected: DeliveryRejected(**delivery, reason="missing_placeholder",
                                           detail="recipients[0] cannot fill {{plan}}"),
        MailSent: MailSent(**recipient, message_id="<crm-2026-000123.0@shop.example.com>",
                           smtp_code=250, attempts=1),
        MailDeferred: MailDeferred(**recipient, smtp_code=451,
                                   smtp_message="4.7.1 Greylisted, try again in 300 seconds",
                                   attempts=1, retry_at=_AT),
        MailFailed: MailFailed(**{**recipient, "account_id": _STANDBY}, stage="recipient",
                               smtp_code=550, smtp_message="5.1.1 User unknown",
                               permanent=True, attempts=1, requested_account_id=_ACCOUNT),
        MailBounced: MailBounced(**recipient, message_id="<crm-2026-000123.0@shop.example.com>",
                                 kind="hard", status="5.1.1",
                                 diagnostic="550 5.1.1 <tanaka@example.com>: User unknown",
                                 remote_mta="mx1.example.com"),
        DeliveryCompleted: DeliveryCompleted(**delivery, sent=1, failed=0, total=1),
        DeliveryCancelled: DeliveryCancelled(**delivery, sent=120, cancelled=19880,
                                             total=20000),
        AccountPaused: AccountPaused(
            **common, account_id=_ACCOUNT, reason="quota", smtp_code=550,
            smtp_message="5.4.5 Daily user sending quota exceeded.", resumes_at=_AT,
            window="day"),
        AccountResumed: AccountResumed(**common, account_id=_ACCOUNT),
        AccountThrottled: AccountThrottled(
            **common, account_id=_ACCOUNT, smtp_code=421,
            smtp_message="4.7.0 Too many messages, slow down", interval_ms=2000),
        AccountWarning: AccountWarning(
            **common, account_id=_ACCOUNT, reason="policy_bounce", status="5.7.1",
            diagnostic="550 5.7.1 Service unavailable; client host blocked using a blocklist",
            remote_mta="mx1.example.com"),
        AccountCreated: AccountCreated(**common, account_id=_ACCOUNT, account=_account()),
        AccountUpdated: AccountUpdated(**common, account_id=_ACCOUNT, account=_account()),
        AccountDeleted: AccountDeleted(**common, account_id=_ACCOUNT, account=_account()),
    }


def _schema(model: type[BaseModel], shared: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    shared.update(schema.pop("$defs", {}))
    return schema


def _exchange(name: str, kind: str, vhost: str) -> dict[str, Any]:
    return {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": vhost}


# What other systems publish to `mail.requests`: channel, operation, description, and what
# the dispatcher takes.
_INTO_DISPATCHER: dict[type[BaseModel], tuple[str, str, str, str]] = {
    DeliveryRequest: ("deliveryRequests", "receiveDeliveryRequest",
                      "Delivery requests from other systems (message_id = delivery_id: a "
                      "repeat is never sent twice).", "requests"),
    DeliveryCancel: ("deliveryCancels", "receiveDeliveryCancel",
                     "Cancel a delivery (message_id = cancel:<delivery_id>): every recipient "
                     "not yet sent becomes cancelled; requested_by must be the delivery's "
                     "requester.", "cancels"),
}


def render(topology: Topology | None = None, vhost: str = "mail") -> dict[str, Any]:
    topology = topology or Topology()
    shared: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    send_binding = {"amqp": {"deliveryMode": 2, "mandatory": True,
                             "bindingVersion": AMQP_BINDING}}
    for model, example in examples().items():
        name = model.__name__
        kind = getattr(example, "type", None) or {
            DeliveryRequest: "delivery.request", DeliveryCancel: "delivery.cancel"}.get(
                model, "mail.send")
        messages[name] = {
            "name": name, "title": kind, "summary": (model.__doc__ or kind).split("\n")[0],
            "contentType": "application/json",
            "payload": _schema(model, shared),
            "examples": [{"name": f"{name} example",
                          "payload": example.model_dump(mode="json")}],
            "bindings": {"amqp": {"contentEncoding": "utf-8", "messageType": kind,
                                  "bindingVersion": AMQP_BINDING}},
        }
        ref = {"$ref": f"#/components/messages/{name}"}
        if model in _INTO_DISPATCHER:
            channel, operation, description, what = _INTO_DISPATCHER[model]
            channels[channel] = {
                "address": kind, "messages": {name: ref}, "description": description,
                "bindings": {"amqp": {"is": "routingKey", "exchange": _exchange(
                    topology.requests_exchange, "topic", vhost),
                    "bindingVersion": AMQP_BINDING}}}
            operations[operation] = {
                "action": "receive", "channel": {"$ref": f"#/channels/{channel}"},
                "summary": f"The dispatcher takes {what} from {topology.requests_queue}."}
        elif model is SendJob:
            channels["sendJobs"] = {
                "address": "{account_id}", "messages": {name: ref},
                "description": "One job per recipient, routing key = the account's id, into "
                               f"the account's queue {topology.account_queue('{account_id}')}"
                               "; for priority high, routing key <account_id>.urgent, into "
                               f"{topology.urgent_queue('{account_id}')}, which the same "
                               "worker looks at first.",
                "parameters": {"account_id": {"description": "The account's id (UUID)."}},
                "bindings": {"amqp": {"is": "routingKey", "exchange": _exchange(
                    topology.send_exchange, "direct", vhost), "bindingVersion": AMQP_BINDING}}}
            operations["sendJob"] = {
                "action": "send", "channel": {"$ref": "#/channels/sendJobs"},
                "summary": "The dispatcher fans a stored delivery out.",
                "bindings": send_binding}
            operations["receiveJob"] = {
                "action": "receive", "channel": {"$ref": "#/channels/sendJobs"},
                "summary": "The sender takes an account's jobs, one at a time (prefetch 1)."}
        else:
            key = kind.replace(".", "_")
            channels[key] = {
                "address": kind, "messages": {name: ref},
                "description": f"`{kind}` events; bind a queue of your own to watch them.",
                "bindings": {"amqp": {"is": "routingKey", "exchange": _exchange(
                    topology.events_exchange, "topic", vhost),
                    "bindingVersion": AMQP_BINDING}}}
            operations[f"send_{key}"] = {
                "action": "send", "channel": {"$ref": f"#/channels/{key}"},
                "summary": f"Published as `{kind}` (message_id = event_id: a repeat keeps "
                           "its id).",
                "bindings": send_binding}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "mail-delivery",
            "version": "2",
            "description": "Mail delivery for business systems: delivery requests in, one "
                           "event per outcome out (../shared/CONTRACT.md in the project's "
                           "docs; README). Generated from shared/messages.py by "
                           f"`{_GENERATOR}`.",
        },
        "defaultContentType": "application/json",
        "servers": {"rabbitmq": {"host": "rabbitmq:5672", "protocol": "amqp",
                                 "protocolVersion": "0.9.1", "pathname": f"/{vhost}",
                                 "description": "RabbitMQ 3.10+, vhost mail."}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(shared.items()))},
    }


def dump(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    target.write_text(f"# Generated by `{_GENERATOR}` (make schemas): do not edit.\n"
                      + dump(render()), encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
