"""The send path's handler on fakes (tests/support/fakes.py): a fake database, SMTP session,
clock and lease, no server. Each job's disposition and what it left in the ledger and the
outbox, for every way a job can end."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet

from services.sender.bounces.verp import Verp
from services.sender.delivery.context import Arrival
from services.sender.delivery.disposition import (
    Ack,
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
from shared.messages import SendJob, stable_event_id
from shared.smtp import SmtpStageError
from shared.topology import Topology
from tests.support.fakes import FakeClock, FakeSession, FakeStore, expired_at, recipient_row

ACCOUNT = "acc-1"
DELIVERY = "d-1"


class FakeCarrier:
    """The edge's side of the message: `fails` carry-outs raise first; `open` is whether the
    message's channel is still open."""

    def __init__(self, fails: int = 0, open: bool = True) -> None:
        self.done: list[Disposition] = []
        self.fails = fails
        self.open = open

    def alive(self) -> bool:
        return self.open

    async def carry_out(self, disposition: Disposition) -> None:
        if self.fails:
            self.fails -= 1
            raise ConnectionError("the channel's publish failed")
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
        self.session = FakeSession(*answers, clock=self.clock)
        self.secret_readable = True
        self.wakes = 0
        self.health = DatabaseHealth()
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
            wake_events=self.wake, database=self.health, verp=Verp([]),
            store=self.db, sessions=self.sessions, clock=self.clock)
        self.worker = AccountWorker(account or account_row(), parts, self)
        self.worker.subscribing(None)

    def wake(self) -> None:
        self.wakes += 1

    async def hold_lease(self) -> None:
        """The account's lease held and its pause over: the next job is sent at once, its
        row not read on arrival."""
        await self.worker.pacer.turn()

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

    async def take(self, job: SendJob | None, carrier: FakeCarrier | None = None,
                   **arrival: Any) -> list[Disposition]:
        carrier = carrier or FakeCarrier()
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
    assert harness.wakes == 1  # the relay told of the committed event


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
    await harness.hold_lease()  # held: no look on arrival
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
    assert harness.db.leases[ACCOUNT].owner is None  # given back: another may take it
    assert harness.session.closed == harness.session.opened == 1
    assert harness.wakes == 1
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
    assert harness.health.healthy  # failed meanwhile, healthy again


async def test_a_redelivered_copy_of_a_sent_job_announces_it_again_without_a_send() -> None:
    harness = Harness()
    job = harness.job(state="sent", message_id="<m@x>", last_smtp_code=250, attempts=1)
    await harness.hold_lease()  # no look on arrival
    assert await harness.take(job) == [Ack()]
    assert harness.session.sent == []
    [event] = harness.db.outbox
    assert (event["type"], event["message_id"], event["attempts"]) == ("mail.sent", "<m@x>", 1)


@pytest.mark.parametrize("interval_ms", [1000, 6000])
async def test_the_second_send_waits_the_account_interval_from_the_first(
        interval_ms: int) -> None:
    harness = Harness(account=account_row(send_interval_ms=interval_ms))
    await harness.take(harness.job(0))
    first_end = harness.worker.pacer.ended_at
    await harness.take(harness.job(1))
    assert harness.session.started[1] - first_end >= interval_ms / 1000
    assert [harness.state(0), harness.state(1)] == ["sent", "sent"]


async def test_a_cancel_committed_while_the_connection_opened_withdraws_the_mail() -> None:
    harness = Harness()
    job = harness.job()
    # Read on arrival (1), read as MAIL goes out (2); a cancel commits after it, while the
    # session's first connection opens: the read again before DATA (3) sees it.
    harness.db.changes_after = (2, {"state": "cancelled"})
    assert await harness.take(job) == [Ack()]
    assert harness.session.sent == [] and harness.db.records == []
    assert harness.db.reads == 3


async def test_a_job_whose_delivery_was_paused_meanwhile_is_held_back_not_sent() -> None:
    harness = Harness()
    job = harness.job()
    await harness.hold_lease()
    harness.db.rows[(DELIVERY, 0)]["paused_at"] = datetime.now(UTC)
    assert await harness.take(job) == [Ack()]
    assert harness.session.sent == [] and harness.state() == "scheduled"


async def test_a_job_that_expired_while_it_waited_is_settled_expired_before_data() -> None:
    harness = Harness()
    job = harness.job()
    await harness.hold_lease()
    harness.db.rows[(DELIVERY, 0)]["expires_at"] = expired_at()
    assert await harness.take(job) == [Ack()]
    assert harness.session.sent == [] and harness.state() == "expired"


async def test_a_redelivered_job_of_a_completed_delivery_announces_both_with_their_ids() -> None:
    harness = Harness()
    job = harness.job(state="sent", message_id="<m@x>", attempts=1, sent=1,
                      completed_at=datetime.now(UTC))
    await harness.hold_lease()
    assert await harness.take(job) == [Ack()]
    sent, completed = harness.db.outbox
    assert (sent["event_id"], sent["smtp_code"]) == (
        stable_event_id(job.job_id, "sent"), 250)
    assert (completed["type"], completed["event_id"], completed["sent"]) == (
        "delivery.completed", stable_event_id(DELIVERY, "completed"), 1)
    assert harness.wakes == 1


async def test_a_provider_asking_to_slow_down_defers_and_announces_the_slower_pace() -> None:
    harness = Harness(refused("rcpt", 452, "4.5.3 Too many recipients"))
    assert await harness.take(harness.job()) == [ToRetry(30)]
    assert harness.events() == ["account.throttled", "mail.deferred"]
    assert harness.worker.throttled
    assert harness.worker.pacer.not_before > harness.worker.pacer.ended_at


async def test_storing_the_slower_pace_may_fail_without_holding_up_the_job() -> None:
    harness = Harness(refused("rcpt", 452, "4.5.3 Too many recipients"))
    harness.db.faults = 1  # the pace's write; the deferral's record then commits
    assert await harness.take(harness.job()) == [ToRetry(30)]
    assert harness.events() == ["mail.deferred"] and harness.worker.throttled


async def test_a_job_given_while_the_account_is_not_consumed_goes_back_untouched() -> None:
    harness = Harness()
    harness.worker.unsubscribed()
    assert await harness.take(harness.job()) == [Requeue()]
    assert harness.session.sent == []
    # Giving it back may fail too (the channel gone): the broker gives it again anyway.
    assert await harness.take(harness.job(), FakeCarrier(fails=1)) == []


async def test_a_failed_ack_is_tried_again_without_a_second_send() -> None:
    harness = Harness()
    carrier = FakeCarrier(fails=1)
    assert await harness.take(harness.job(), carrier) == [Ack()]
    assert len(harness.session.sent) == 1 and len(harness.db.records) == 1
    assert 0.5 in harness.clock.slept  # the job's backoff, on the fake clock


async def test_a_closed_channel_leaves_the_message_to_the_broker_its_outcome_recorded() -> None:
    harness = Harness()
    assert await harness.take(harness.job(), FakeCarrier(fails=1, open=False)) == []
    assert harness.state() == "sent" and len(harness.session.sent) == 1


async def test_a_standby_sends_the_paused_account_job_with_its_from_and_says_so() -> None:
    harness = Harness()
    home = account_row(id="acc-home", from_address="shop@example.net")
    job = harness.job(account_id="acc-home")
    assert await harness.take(job, home=home) == [Ack()]
    [event] = harness.db.outbox
    assert (event["account_id"], event["requested_account_id"]) == (ACCOUNT, "acc-home")
    # The standby's queue is not the job's: a job of yet another account goes back home.
    assert await harness.take(harness.job(1, account_id=ACCOUNT), home=home) == [
        ToQueue(ACCOUNT)]


async def test_a_mail_that_can_never_be_written_fails_without_a_server_asked() -> None:
    harness = Harness()
    job = harness.job()
    bad = job.model_copy(update={"email": "no address"})
    assert await harness.take(bad) == [Ack()]
    assert harness.state() == "failed" and harness.session.sent == []
    [record] = harness.db.records
    assert (record["touched_server"], record["hold"]) == (False, None)
    assert "not sendable" in record["message"]


async def test_a_job_of_no_stored_delivery_goes_to_the_dead_letters() -> None:
    harness = Harness()
    job = harness.job()
    harness.db.rows.clear()
    assert await harness.take(job) == [
        ToDead("unknown_delivery", f"no recipient row for {job.job_id}")]


async def test_a_database_fault_announcing_a_redelivered_job_again_is_retried_in_hand() -> None:
    harness = Harness()
    job = harness.job(state="sent", message_id="<m@x>", attempts=1)
    await harness.hold_lease()
    harness.db.outbox_faults = 1  # the outbox write of its events fails once
    assert await harness.take(job) == [Ack()]
    assert harness.events() == ["mail.sent"] and harness.session.sent == []
    assert 0.5 in harness.clock.slept  # the job's backoff, on the fake clock
