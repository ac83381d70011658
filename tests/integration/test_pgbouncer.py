"""The services behind PgBouncer in transaction pooling mode (tests/support/pgbouncer.py):
each transaction may run on another server connection, so nothing may rely on session
state. A selection of the suite's own tests runs again through the pooler (imported below:
pytest collects them in this module, with its fixtures): the delivery locks, the schedule's
owner, the migrations, the dispatcher and the sender in process and as processes."""

from collections.abc import Iterator

import pytest

from shared.db import Pooling
from tests.conftest import required_env
from tests.integration.test_bounce_mailbox import (  # noqa: F401 - run again, and a fixture
    dovecot,
    test_a_bounce_in_the_mailbox_is_matched_announced_suppressed_and_removed,
)
from tests.integration.test_delivery_control import (  # noqa: F401 - run again
    test_a_cancel_committed_but_never_announced_is_announced_by_the_schedule,
    test_a_request_by_http_gives_the_events_of_the_same_request_by_amqp,
    test_a_scheduled_delivery_is_accepted_at_once_and_fanned_out_at_its_time_across_a_restart,
    test_a_suppressed_address_is_left_out_counted_and_listed,
    test_one_schedule_owner_among_dispatchers_and_another_takes_over,
)
from tests.integration.test_delivery_locks import (  # noqa: F401 - run again, and a fixture
    direct,
    test_a_delivery_lock_excludes_and_is_gone_after,
    test_a_holder_whose_client_dies_lets_the_next_one_in,
    test_a_holder_whose_server_connection_is_killed_fails_its_work_and_frees_the_lock,
)
from tests.integration.test_dispatcher import (  # noqa: F401 - run again
    test_a_request_handled_again_after_a_crash_repeats_its_acceptance_with_the_same_id,
    test_a_request_is_stored_once_and_fanned_out_one_job_per_recipient,
    test_the_same_request_twice_sends_each_recipient_once,
)
from tests.integration.test_dispatcher_process import (  # noqa: F401 - run again
    dispatcher_process,
    test_a_dispatcher_killed_mid_fanout_publishes_every_job_and_one_window_at_most_twice,
)
from tests.integration.test_migrations import (  # noqa: F401 - run again
    test_a_failing_migration_leaves_nothing_half_done,
    test_two_concurrent_runners_do_not_collide,
)
from tests.integration.test_sender import (  # noqa: F401 - run again
    test_a_copy_of_a_job_already_sent_is_not_sent_again,
    test_a_delivery_is_sent_recorded_and_completed,
    test_the_lease_is_kept_through_the_pause_and_given_back_on_stop,
)
from tests.integration.test_sender_control import (  # noqa: F401 - run again
    test_a_cancel_during_sending_stops_it_at_once_and_counts_right,
    test_a_paused_delivery_waits_while_the_accounts_others_go_on_and_resumes_once,
)
from tests.integration.test_sender_process import (  # noqa: F401 - run again
    harness,
    test_a_sender_killed_mid_delivery_and_restarted_sends_everything_once,
    test_pacing_holds_with_two_senders_and_across_a_sigkill_of_the_active_one,
)
from tests.support.pgbouncer import pgbouncer


@pytest.fixture(scope="module")
def bouncer_dsn() -> Iterator[str]:
    with pgbouncer(required_env("MAIL_POSTGRES_DSN")) as dsn:
        yield dsn


@pytest.fixture
def postgres_dsn(bouncer_dsn: str) -> str:
    """Every fixture and test of this module reaches PostgreSQL through the pooler."""
    return bouncer_dsn


@pytest.fixture
def db_pooling() -> Pooling:
    return "transaction"
