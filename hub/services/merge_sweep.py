"""The periodic sweep: merges whose worker went silent, and merges no queue has taken.

Safe to run from every worker at once: each change is one conditional UPDATE.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.errors import MergeCancelled, WorkerLost
from hub.models import Merge, utcnow


def sweep_stale(session: Session, settings: Settings) -> list[str]:
    """Hand out again each running merge whose heartbeat is older than `stale_seconds`
    (its worker died): queued again, or failed with worker_lost after the last attempt,
    or cancelled when that was asked. Returns the ids queued again."""
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.stale_seconds)
    stale = list(session.scalars(select(Merge.id).where(
        Merge.status == "running", Merge.heartbeat_at < cutoff)))
    requeued = []
    for merge_id in stale:
        still = (Merge.id == merge_id, Merge.status == "running", Merge.heartbeat_at < cutoff)
        cancelled = session.execute(
            update(Merge).where(*still, Merge.cancel_requested.is_(True))
            .values(status="cancelled", finished_at=now, worker=None,
                    error_code=MergeCancelled.code,
                    error_detail="Cancelled by its requester; its worker stopped answering.")
            .execution_options(synchronize_session=False)).rowcount
        if cancelled:
            continue
        lost = session.execute(
            update(Merge).where(*still, Merge.attempts >= settings.merge_attempts)
            .values(status="failed", finished_at=now, worker=None, error_code=WorkerLost.code,
                    error_detail=f"The worker running this merge stopped answering"
                                 f" {settings.merge_attempts} times; it was not run again.")
            .execution_options(synchronize_session=False)).rowcount
        if lost:
            continue
        if session.execute(
                update(Merge).where(*still)
                .values(status="queued", worker=None, enqueued_at=None, progress=0.0)
                .execution_options(synchronize_session=False)).rowcount:
            requeued.append(merge_id)
    return requeued


#: A message not taken by then is taken as lost (a broker restarted without its data): the
#: broker hands an unacknowledged message out again after this long anyway (Celery's
#: visibility timeout, hub.jobs.celery_queue), so a merge that only waits in a long queue
#: is not sent twice.
MESSAGE_LOST_SECONDS = 6 * 3600


def unsent(session: Session) -> list[str]:
    """Queued merges that no queue took (the broker was down at submit), or whose message
    is taken as lost: to be sent again, oldest first."""
    cutoff = utcnow() - timedelta(seconds=MESSAGE_LOST_SECONDS)
    return list(session.scalars(
        select(Merge.id).where(Merge.status == "queued",
                               or_(Merge.enqueued_at.is_(None), Merge.enqueued_at < cutoff))
        .order_by(Merge.created_at)))


def mark_sent(session: Session, merge_id: str) -> None:
    """Record that a queue accepted the merge's id."""
    session.execute(update(Merge).where(Merge.id == merge_id, Merge.status == "queued")
                    .values(enqueued_at=utcnow())
                    .execution_options(synchronize_session=False))
