"""A job made ready to send: checked against the account, its mail written, its session at
hand."""

from dataclasses import dataclass
from typing import Any

import structlog

from services.sender import metrics
from services.sender.delivery.arrival import done_with
from services.sender.delivery.compose import Composer
from services.sender.delivery.context import InTurn
from services.sender.delivery.disposition import Ack, Disposition, ToQueue
from services.sender.delivery.outcomes import Outcomes
from services.sender.delivery.ports import Session
from shared.crypto import UndecryptableSecret

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Prepared:
    composer: Composer
    mail: Any
    metadata: dict
    session: Session


async def prepare(worker: Any, parts: Any, outcomes: Outcomes,
                  turn: InTurn) -> Prepared | Disposition:
    """The job checked against the account, its mail written, its session at hand; or what
    becomes of it when it cannot be sent from here."""
    job = turn.job
    if job.account_id != turn.queue_account:
        # Never through this account's server and From: back to its own account's queue.
        metrics.MISROUTED.inc()
        log.error("a job of another account on this account's queue: sent back to its own",
                  job_account_id=job.account_id)
        return ToQueue(job.account_id)
    if worker.address_problem is not None:
        await worker.pause("account", None, worker.address_problem)
        return ToQueue(turn.queue_account)
    try:
        # The From is the one the delivery asked for: its own account's, also when a
        # standby sends it (the standby may: failover.may_send_as).
        composer, metadata = await parts.composers.get(
            job.delivery_id, turn.home if turn.home is not None else worker.account)
        mail = composer.compose(email=job.email, name=job.name, vars=job.vars)
    except (LookupError, ValueError) as error:
        done = await _not_composed(parts, outcomes, turn, error)
        if done is None:
            raise  # the delivery's row not there yet, or the database away: tried again
        return done
    try:
        session = await worker.session_for_send()
    except UndecryptableSecret as error:
        await worker.pause("secret", None, str(error))
        return ToQueue(turn.queue_account)
    return Prepared(composer, mail, metadata, session)


async def _not_composed(parts: Any, outcomes: Outcomes, turn: InTurn,
                        error: Exception) -> Disposition | None:
    row = await parts.store.recipient(turn.job.delivery_id, turn.job.index)
    if done_with(row):
        return await outcomes.already_done(turn, row)
    if isinstance(error, LookupError):
        return None
    # A message that can never be written: failed, never retried.
    await outcomes.settle(turn, row["metadata"], "failed", None, f"not sendable: {error}",
                          None, touched_server=False)
    return Ack()
