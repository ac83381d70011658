"""The send path's handler on fakes (tests/support/fakes.py): a fake database, SMTP session,
clock and lease, no server. Each job's disposition and what it left in the ledger and the
outbox, for every way a job can end."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet

from services.sender.bounces.verp import Verp
from services.sender.delivery.disposition import (
    Ack,
    Arrival,
    Disposition,
    Requeue,
    ToDead,
    ToQueue,
    ToRetry,
)
from services.sender.delivery.recorder import DatabaseHealth
from services.sender.delivery.worker import AccountWorker
from services.sender.parts import Composers, SenderParts
from services.sender.settings import SenderSettings
from services.sender.store.leases import QuotaFull
from shared.crypto import UndecryptableSecret
from shared.messages import SendJob
from shared.smtp import SmtpStageError
from shared.topology import Topology
from tests.support.fakes import FakeClock, FakeSession, FakeStore, expired_at, recipient_row

ACCOUNT = "acc-1"
DELIVERY = "d-1"


class FakeCarrier:
    def __init__(self) -> None:
        self.done: list[Disposition] = []

    def alive(self) -> bool:
        return True

    async def carry_out(self, disposition: Disposition) -> None:
        self.done.append(disposition)


def account_row(**changes: Any) -> dict[str, Any]:
    row = {"id": ACCOUNT, "from_address": "news@example.com", "from_name": None,
           "reply_to": None, "send_interval_ms": 0, "throttled_interval_ms": None,
           "quota_per_minute": None, "quota_per_hour": None, "quota_per_day": None,
           "bounce_address": None, "updated_at": datetime(2026, 1, 1, tzinfo=UTC)}
    row.update(changes)
    return row


class Harness:
    """One account's worker on fakes; `listener` of its pauses."""

    def __init__(self, *answers: Any, account: dict | None = None) -> None:
        self.clock = FakeClock()
        self.db = FakeStore(self.clock)
        self.session = FakeSession(*answers)
        self.secret_readable = True
        self.pauses_heard: list[str] = []
        settings = SenderSettings(
            amqp_url="amqp://mail:secret@127.0.0.1/mail",
            postgres_dsn="postgresql://mail@127.0.0.1/mail",
            fernet_keys=Fernet.generate_key().decode(), replica_id="r1",
            retry_delays_s="30,120")
        parts = SenderParts(
            pool=None, settings=settings, box=None, ssl_context=None,  # type: ignore[arg-type]
            topology=Topology(retry_delays_s=settings.retry_tiers()),
            publish_channel=None, composers=Composers(self.db),  # type: ignore[arg-type]
            wake_events=lambda: None, database=DatabaseHealth(), verp=Verp([]),
            store=self.db, sessions=self.sessions, clock=self.clock)
        self.worker = AccountWorker(account or account_row(), parts, self)
        self.worker.subscribing(None)

    def sessions(self, account: Any, probe: bool) -> FakeSession:
        if not self.secret_readable:
            raise UndecryptableSecret("no key decrypts smtp_password of the account")
        return self.session

    async def paused(self, worker: AccountWorker) -> None:
        self.pauses_heard.append(worker.account_id)
        worker.unsubscribed()

    def job(self, index: int = 0, account_id: str = ACCOUNT, **row: Any) -> SendJob:
        self.db.rows[(DELIVERY, index)] = recipient_row(**row)
        return SendJob(job_id=f"{DELIVERY}:{index}", delivery_id=DELIVERY,
                       account_id=account_id, index=index, email=f"r{index}@example.org",
                       name="R")

    async def take(self, job: SendJob | None, **arrival: Any) -> list[Disposition]:
        carrier = FakeCarrier()
        await self.worker.handler.take(Arrival(job, **arrival), carrier)
        return carrier.done

    def state(self, index: int = 0) -> str:
        return self.db.rows[(DELIVERY, index)]["state"]

    def events(self) -> list[str]:
        return [event["type"] for event in self.db.outbox]


def refused(stage: str, code: int | None, text: str, **kind: Any) -> SmtpStageError:
    return SmtpStageError(stage, code, text, "", permanent=code is not None and code >= 500,
                          **kind)


async def test_a_mail_the_server_takes_is_recorded_sent_with_its_event_then_acked() -> None:
    harness = Harness((250, "2.0.0 Ok: queued as 4F2"))
    assert await harness.take(harness.job()) == [Ack()]
    assert harness.session.sent == [("news@example.com", "r0@example.org")]
    assert harness.state() == "sent"
    [event] = harness.db.outbox
    assert (event["type"], event["recipient"], event["smtp_code"]) == (
        "mail.sent", "r0@example.org", 250)
    assert harness.db.records[0]["hold"] is not None  # the lease kept for the next send


async def test_a_temporary_refusal_defers_the_recipient_to_the_first_retry_queue() -> None:
    harness = Harness(refused("rcpt", 451, "4.2.0 Mailbox busy, try later"))
    assert await harness.take(harness.job()) == [ToRetry(30)]
    assert harness.state() == "deferred"
    [event] = harness.db.outbox
    assert (event["type"], event["attempts"], event["smtp_code"]) == ("mail.deferred", 1, 451)


async def test_a_permanent_refusal_fails_the_recipient_once() -> None:
    harness = Harness(refused("rcpt", 550, "5.1.1 <r0@example.org>: user unknown"))
    assert await harness.take(harness.job()) == [Ack()]
    assert harness.state() == "failed"
    [event] = harness.db.outbox
    assert (event["type"], event["permanent"], event["outcome"], event["stage"]) == (
        "mail.failed", True, "failed", "recipient")


async def test_a_line_lost_after_the_data_leaves_the_outcome_unknown_never_retried() -> None:
    harness = Harness(refused("data", None, "Connection lost", after_data=True))
    assert await harness.take(harness.job()) == [Ack()]
    assert harness.state() == "unknown"
    [event] = harness.db.outbox
    assert (event["type"], event["outcome"]) == ("mail.failed", "unknown")


async def test_a_cancelled_job_is_acked_on_arrival_without_a_turn_or_a_server() -> None:
    harness = Harness()
    assert await harness.take(harness.job(state="cancelled")) == [Ack()]
    assert harness.session.sent == [] and harness.db.records == []
    assert harness.db.leases[ACCOUNT].takes == 0  # it never waited for the account's pace


async def test_an_expired_job_is_settled_expired_on_arrival_with_no_server_asked() -> None:
    harness = Harness()
    assert await harness.take(harness.job(expires_at=expired_at())) == [Ack()]
    assert harness.session.sent == []
    assert harness.state() == "expired"
    [event] = harness.db.outbox
    assert (event["type"], event["reason"], event["stage"]) == ("mail.failed", "expired", None)


async def test_a_job_cancelled_while_it_waited_is_withdrawn_before_data() -> None:
    harness = Harness()
    job = harness.job()
    harness.worker.pacer._lease_until = harness.clock.now() + 60  # held: no look on arrival
    harness.db.rows[(DELIVERY, 0)]["state"] = "cancelled"
    assert await harness.take(job) == [Ack()]
    assert harness.session.sent == [] and harness.db.records == []


async def test_a_job_of_another_account_goes_back_to_its_own_queue_unsent() -> None:
    harness = Harness()
    assert await harness.take(harness.job(account_id="acc-2")) == [ToQueue("acc-2")]
    assert harness.session.sent == [] and harness.db.records == []


async def test_a_job_that_cannot_be_decoded_goes_to_the_dead_letters() -> None:
    harness = Harness()
    assert await harness.take(None, invalid="index: field required") == [
        ToDead("invalid_job", "index: field required")]


async def test_a_refused_login_pauses_the_account_and_fails_nobody() -> None:
    harness = Harness(refused("auth", 535, "5.7.8 Authentication credentials invalid"))
    assert await harness.take(harness.job()) == [ToQueue(ACCOUNT)]
    assert harness.state() == "queued" and harness.db.records == []
    assert [reason for reason, _ in harness.db.pauses] == ["auth"]
    assert harness.events() == ["account.paused"]
    assert harness.pauses_heard == [ACCOUNT] and harness.worker.paused
    # Paused: the next job goes back to the broker untouched.
    assert await harness.take(harness.job(1)) == [Requeue()]


async def test_a_full_quota_window_pauses_the_account_until_it_frees() -> None:
    harness = Harness()
    frees = datetime.now(UTC) + timedelta(hours=1)
    harness.db.lease(ACCOUNT).full = QuotaFull("day", frees)
    assert await harness.take(harness.job()) == [ToQueue(ACCOUNT)]
    assert harness.session.sent == [] and harness.state() == "queued"
    [event] = harness.db.outbox
    assert (event["type"], event["reason"], event["window"]) == (
        "account.paused", "quota", "day")


async def test_a_password_no_key_decrypts_pauses_the_account_for_its_secret() -> None:
    harness = Harness()
    harness.secret_readable = False
    assert await harness.take(harness.job()) == [ToQueue(ACCOUNT)]
    assert [reason for reason, _ in harness.db.pauses] == ["secret"]
    assert harness.session.sent == []


async def test_a_database_fault_while_recording_is_retried_in_place_never_sent_again() -> None:
    harness = Harness((250, "2.0.0 Ok"))
    harness.db.faults = 2  # the outcome's record fails twice, then commits
    assert await harness.take(harness.job()) == [Ack()]
    assert len(harness.session.sent) == 1
    assert harness.state() == "sent" and len(harness.db.records) == 1
    assert harness.events() == ["mail.sent"]


async def test_a_redelivered_copy_of_a_sent_job_announces_it_again_without_a_send() -> None:
    harness = Harness()
    job = harness.job(state="sent", message_id="<m@x>", last_smtp_code=250, attempts=1)
    harness.worker.pacer._lease_until = harness.clock.now() + 60  # no look on arrival
    assert await harness.take(job) == [Ack()]
    assert harness.session.sent == []
    [event] = harness.db.outbox
    assert (event["type"], event["message_id"], event["attempts"]) == ("mail.sent", "<m@x>", 1)


@pytest.mark.parametrize("interval_ms", [0, 6000])
async def test_the_second_send_waits_the_account_interval_from_the_first(
        interval_ms: int) -> None:
    harness = Harness(account=account_row(send_interval_ms=interval_ms))
    await harness.take(harness.job(0))
    first_end = harness.worker.pacer.ended_at
    await harness.take(harness.job(1))
    assert harness.worker.pacer.ended_at - first_end >= interval_ms / 1000
    assert [harness.state(0), harness.state(1)] == ["sent", "sent"]
