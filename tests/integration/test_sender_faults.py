"""The sender when the infrastructure fails around a send: PostgreSQL connections dropped in
the accepted window (server 250 -> ledger commit), a pause that cannot be recorded, a password
that cannot be decrypted, a job on the wrong account's queue. Real broker, database and SMTP
servers; the faults are injected for real (pg_terminate_backend, a trigger that refuses a
write, a key that is not configured)."""

import asyncio
import collections
import uuid
from datetime import timedelta
from typing import Any

import aio_pika
import asyncpg

from services.config_svc.queues import AccountQueues
from services.sender import metrics, store
from shared.crypto import SecretBox
from shared.messages import AccountDeleted, SendJob
from shared.topology import make_message, publish
from tests.integration.dispatcher_fixtures import insert_account, request_body
from tests.integration.sender_fixtures import SenderStack, configure_account, sender_on
from tests.support.mail import gaps, recipients
from tests.support.smtp_servers import auth_server, smtp_server
from tests.support.waiting import eventually

USER = "news@shop.example.com"


async def drop_database_connections(dsn: str) -> int:
    """Every other client connection of the database terminated, as a fail-over does."""
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'")
    finally:
        await connection.close()


async def test_connections_dropped_after_the_250_never_send_a_recipient_twice(
    start_sender: Any, postgres_dsn: str,
) -> None:
    dropped = []

    async def drop_before_some_replies(rcpt_tos: list[str]) -> None:
        if len(dropped) < 4 and rcpt_tos[0][1] in "0369":
            dropped.append(await drop_database_connections(postgres_dsn))

    async with smtp_server(before_reply=drop_before_some_replies) as server:
        stack = await sender_on(start_sender, server, send_interval_ms=150)
        body = request_body(account_id=stack.account_id, recipients=recipients(12))
        await stack.dispatcher.publish_request(body)
        completed = await stack.completed(body["delivery_id"])
        await asyncio.sleep(0)

    assert len(dropped) == 4 and all(dropped), "no connection was dropped: nothing was tested"
    assert (completed["sent"], completed["failed"], completed["total"]) == (12, 0, 12)
    received = collections.Counter(m.rcpt_tos[0] for m in server.messages)
    assert received == {f"r{i}@example.com": 1 for i in range(12)}
    # At-least-once: a repeat of an event keeps its id.
    ids = {e["event_id"] for e in stack.of_type("delivery.completed")
           if e["delivery_id"] == body["delivery_id"]}
    assert len(ids) == 1
    sent_ids = collections.defaultdict(set)
    for event in stack.of_type("mail.sent"):
        sent_ids[event["recipient"]].add(event["event_id"])
    assert all(len(ids) == 1 for ids in sent_ids.values())
    # The pause held at the server, also after a record that had to be retried.
    assert min(gaps(server)) >= 0.150


class WriteFault:
    """A trigger that makes PostgreSQL refuse the updates of `table` that match `condition`
    (the first `times` of them, or all until `clear`); a sequence, outside the refused
    transactions, counts the refusals."""

    def __init__(self, pool: asyncpg.Pool, table: str, condition: str,
                 times: int | None = None) -> None:
        self.pool = pool
        self.table = table
        self.condition = condition
        self.times = times
        self.name = "fault_" + uuid.uuid4().hex[:12]

    async def install(self) -> "WriteFault":
        limit = "true" if self.times is None else f"nextval('{self.name}_n') <= {self.times}"
        await self.pool.execute(f"""
            CREATE SEQUENCE {self.name}_n;
            CREATE SEQUENCE {self.name}_hits;
            CREATE FUNCTION {self.name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF ({self.condition}) AND {limit} THEN
                    PERFORM nextval('{self.name}_hits');
                    RAISE EXCEPTION 'injected: this write is refused';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER {self.name} BEFORE UPDATE ON {self.table}
                FOR EACH ROW EXECUTE FUNCTION {self.name}();""")
        return self

    async def hits(self) -> int:
        return await self.pool.fetchval(
            f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {self.name}_hits")

    async def clear(self) -> None:
        await self.pool.execute(
            f"DROP TRIGGER IF EXISTS {self.name} ON {self.table}; "
            f"DROP FUNCTION IF EXISTS {self.name}(); DROP SEQUENCE IF EXISTS {self.name}_n; "
            f"DROP SEQUENCE IF EXISTS {self.name}_hits")


async def test_a_record_refused_after_the_250_is_retried_and_never_sends_twice(
    start_sender: Any,
) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server, send_interval_ms=100)
        body = request_body(account_id=stack.account_id, recipients=recipients(6))
        fault = await WriteFault(stack.dispatcher.pool, "delivery_recipients",
                                 f"NEW.delivery_id = '{body['delivery_id']}' "
                                 "AND NEW.state = 'sent'", times=3).install()
        try:
            await stack.dispatcher.publish_request(body)
            completed = await stack.completed(body["delivery_id"])
            assert await fault.hits() == 3
        finally:
            await fault.clear()

    assert (completed["sent"], completed["total"]) == (6, 6)
    received = collections.Counter(m.rcpt_tos[0] for m in server.messages)
    assert received == {f"r{i}@example.com": 1 for i in range(6)}
    assert min(gaps(server)) >= 0.100
    assert all(e["attempts"] == 1 for e in stack.of_type("mail.sent"))


async def test_a_pause_that_cannot_be_recorded_keeps_the_job_and_pauses_once_it_can(
    start_sender: Any,
) -> None:
    async with auth_server({USER: "the-right-one"}) as server:
        stack = await sender_on(start_sender, server, smtp_auth=True, smtp_username=USER,
                                smtp_password="a-wrong-one")
        pool = stack.dispatcher.pool
        fault = await WriteFault(pool, "account_runtime",
                                 f"NEW.account_id = '{stack.account_id}' "
                                 "AND NEW.paused_reason IS NOT NULL").install()
        try:
            body = request_body(account_id=stack.account_id, recipients=recipients(3))
            await stack.dispatcher.publish_request(body)

            async def tried_three_times() -> bool:
                return await fault.hits() >= 3

            # A sender that took the pause as done would nack its jobs round in a hot loop.
            await eventually(tried_three_times, timeout=20)
        finally:
            await fault.clear()
        paused = await stack.wait_event(lambda e: e["type"] == "account.paused")

    assert paused["reason"] == "auth"
    assert server.connections == 1  # the job was never taken round again
    assert await stack.dispatcher.dead.get(fail=False) is None
    states = await pool.fetch("SELECT state FROM delivery_recipients WHERE delivery_id = $1",
                              body["delivery_id"])
    assert [row["state"] for row in states] == ["queued"] * 3
    runtime = await pool.fetchrow("SELECT paused_reason FROM account_runtime "
                                  "WHERE account_id = $1", stack.account_id)
    assert runtime["paused_reason"] == "auth"
    worker = stack.supervisor.workers[stack.account_id]
    assert worker.paused and worker.consumer_tag is None


async def test_an_undecryptable_password_pauses_the_account_until_it_is_changed(
    start_sender: Any,
) -> None:
    async with auth_server({USER: "the-right-one"}) as server:
        stack = await sender_on(start_sender, server, smtp_auth=True, smtp_username=USER)
        pool = stack.dispatcher.pool
        foreign = SecretBox([SecretBox.generate_key()]).encrypt("the-right-one")
        await configure_account(pool, stack.account_id, smtp_password_enc=foreign)
        try:
            await stack.announce_change()
            body = request_body(account_id=stack.account_id, recipients=recipients(3))
            await stack.dispatcher.publish_request(body)

            paused = await stack.wait_event(lambda e: e["type"] == "account.paused")
            assert paused["reason"] == "secret"
            assert "cannot be decrypted" in paused["smtp_message"]
            assert server.connections == 0
            assert await stack.dispatcher.dead.get(fail=False) is None
            assert not stack.of_type("mail.failed")
        finally:  # a key rotation elsewhere must not meet a password no key can read
            await configure_account(pool, stack.account_id, smtp_password="the-right-one")
        await stack.announce_change()
        completed = await stack.completed(body["delivery_id"])
    assert (completed["sent"], completed["total"]) == (3, 3)
    assert len(stack.of_type("account.resumed")) == 1


async def test_a_job_on_another_accounts_queue_never_goes_through_this_account(
    start_sender: Any,
) -> None:
    async with smtp_server() as server:
        stack = await sender_on(start_sender, server)
        topology = stack.dispatcher.topology
        channel = stack.dispatcher.channel
        other = str(uuid.uuid4())  # an account with a queue, consumed by nobody here
        other_queue = await topology.declare_account_queue(channel, other)
        gone = str(uuid.uuid4())  # an account whose queue no longer exists
        send = await channel.get_exchange(topology.send_exchange)
        for account_id in (other, gone):
            job = SendJob(job_id=f"j-{account_id}", delivery_id="crm-elsewhere",
                          account_id=account_id, index=0, email="x@example.com")
            # Onto this stack's account's queue, as a channel out of step would put it.
            await publish(send, stack.account_id, make_message(job, message_id=job.job_id,
                                                               type_="mail.send"))

        async with other_queue.iterator() as messages, asyncio.timeout(15):
            async for returned in messages:  # a single-active-consumer queue: no basic.get
                await returned.ack()
                break
        dead = await eventually(lambda: stack.dispatcher.dead.get(fail=False), timeout=15)

    assert SendJob.model_validate_json(returned.body).account_id == other
    assert SendJob.model_validate_json(dead.body).account_id == gone
    assert dead.headers["x-reason"] == "wrong_account"
    assert server.connections == 0 and server.messages == []
    assert metrics.MISROUTED._value.get() >= 2
    await other_queue.delete(if_unused=False, if_empty=False)


async def new_account(stack: SenderStack, server: Any, letter: str) -> str:
    """An account of its own (its From says which), with its queue, announced."""
    pool = stack.dispatcher.pool
    account_id = await insert_account(pool)
    await stack.dispatcher.topology.declare_account_queue(stack.dispatcher.channel, account_id)
    await configure_account(pool, account_id, smtp_host=server.host, smtp_port=server.port,
                            from_address=f"{letter}@shop.example.com")
    await stack.announce_change(account_id)
    return account_id


async def delete_account(stack: SenderStack, account_id: str) -> None:
    """As config_svc deletes one, forced: soft delete and its event, then the queue goes."""
    await stack.dispatcher.pool.execute(
        "UPDATE accounts SET deleted_at = now() WHERE id = $1", account_id)
    await stack.announce_change(account_id, AccountDeleted)
    queues = AccountQueues(stack.dispatcher.channel, stack.dispatcher.topology)
    await queues.remove(account_id, reason="account_deleted")


async def queue_exists(amqp: Any, stack: SenderStack, account_id: str) -> bool:
    channel = await amqp.channel()
    try:
        await channel.declare_queue(stack.dispatcher.topology.account_queue(account_id),
                                    passive=True)
        return True
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()


async def test_a_burst_of_deletes_with_two_replicas_sends_nothing_through_a_wrong_account(
    start_sender: Any, amqp: Any,
) -> None:
    async with smtp_server() as server:
        first = await sender_on(start_sender, server, from_address="a@shop.example.com")
        second = await start_sender()
        letters = {first.account_id: "a"}
        for letter in "bcdefg":
            letters[await new_account(first, server, letter)] = letter
        survivors = [first.account_id, next(a for a, x in letters.items() if x == "b")]
        doomed = [account for account in letters if account not in survivors]

        async def everything_consumed() -> bool:
            return all(stack.supervisor.consuming_all and set(letters) <= {
                a for a, w in stack.supervisor.workers.items() if w.consumer_tag}
                for stack in (first, second))

        await eventually(everything_consumed, timeout=20)
        for account_id in doomed:  # within a few tens of milliseconds
            await delete_account(first, account_id)

        async def deletes_followed() -> bool:
            return all(not any(a in stack.supervisor.workers for a in doomed)
                       and stack.supervisor.consuming_all for stack in (first, second))

        await eventually(deletes_followed, timeout=20)
        bodies = []
        for account_id in survivors:
            letter = letters[account_id]
            body = request_body(account_id=account_id, recipients=recipients(10, letter))
            await first.dispatcher.publish_request(body)
            bodies.append(body)
        for body in bodies:
            await eventually(lambda b=body: delivered(server, b), timeout=30)

    for message in server.messages:
        # Each mail through its own account: its From is the account's.
        assert message.mail_from == f"{message.rcpt_tos[0][0]}@shop.example.com"
    received = collections.Counter(m.rcpt_tos[0] for m in server.messages)
    assert all(count == 1 for count in received.values())
    assert len(received) == 20
    for account_id in doomed:
        assert not await queue_exists(amqp, first, account_id)  # never brought back


async def delivered(server: Any, body: dict) -> bool:
    wanted = {r["email"] for r in body["recipients"]}
    return wanted <= {m.rcpt_tos[0] for m in server.messages}


async def test_every_transaction_that_reached_the_server_moves_last_end_whoever_holds_the_lease(
    start_sender: Any,
) -> None:
    """A record after the lease passed to another worker (a send that outlasted it, a record
    retried for long) still stores the end of its transaction, and never moves it back."""
    stack = await start_sender()
    await stack.stop()
    pool = stack.dispatcher.pool
    body = request_body(account_id=stack.account_id)
    await stack.dispatcher.publish_request(body)
    await eventually(lambda: pool.fetchval(
        "SELECT count(*) = 2 FROM delivery_recipients WHERE delivery_id = $1 "
        "AND state = 'queued'", body["delivery_id"]))
    account = stack.account_id
    await store.ensure_runtime(pool, account)
    assert await store.take_lease(pool, account, "replica/other-worker", 0, 30) is not None
    await pool.execute("UPDATE account_runtime SET last_end = now() - interval '1 hour' "
                       "WHERE account_id = $1", account)

    recorded = await store.record(
        pool, delivery_id=body["delivery_id"], index=0, state="sent", code=250, message="ok",
        message_id="<m@x>", account_id=account, owner="replica/late-worker",
        touched_server=True, hold=timedelta(seconds=5))
    row = await pool.fetchrow("SELECT last_end > now() - interval '1 minute' AS moved, "
                              "lease_owner FROM account_runtime WHERE account_id = $1", account)
    assert recorded.applied and not recorded.lease_kept
    assert row["moved"] and row["lease_owner"] == "replica/other-worker"  # not taken over

    future = await pool.fetchval("UPDATE account_runtime SET last_end = now() + interval "
                                 "'1 minute' WHERE account_id = $1 RETURNING last_end", account)
    await store.mark_end(pool, account)  # a withdrawn transaction
    assert await pool.fetchval("SELECT last_end FROM account_runtime WHERE account_id = $1",
                               account) == future  # never backwards
