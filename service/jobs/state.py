"""The job state machine: every transition of a job's row, each one conditional UPDATE.

The database is the record of a job's state; the broker only carries "run job <id>" messages.
Because each transition only applies from the states it names, a duplicate or late message
can never run a job twice or resurrect a finished one::

    queued --claim--> running --finish--> succeeded | failed | cancelled
       |                 |  ^
       |                 |  +-- progress / heartbeat (keeps the lease)
       |                 +-- lease expired --recover--> queued (failed past max attempts)
       |                 +-- worker shutting down --release--> queued (attempt not counted)
       +--cancel--> cancelled            running --cancel--> cancel_requested (stops at a step)

Nothing here imports TensorFlow or Keras: the worker's parent process imports this module
before it forks its children.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Update, select, update
from sqlalchemy.orm import Session

from service.db import utcnow
from service.errors import JobFinished
from service.jobs.params import PruneParams
from service.jobs.table import Job, get_job

logger = logging.getLogger(__name__)


def _update() -> Update:
    # Conditional UPDATEs decide transitions in the database; the session's copies are
    # refreshed where needed instead of being evaluated in Python.
    return update(Job).execution_options(synchronize_session=False)


@dataclass(frozen=True)
class Claim:
    """A job a worker may run now, with its parameters typed again."""

    job_id: str
    model_id: str
    version: int
    params: PruneParams
    attempt: int


def claim_job(session: Session, job_id: str, *, max_attempts: int) -> Claim | None:
    """queued -> running, counting the attempt; None when the job must not run.

    A job that already used ``max_attempts`` is failed here instead of started again.
    """
    now = utcnow()
    queued = (Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
    # A job out of attempts is failed without counting one more: `attempts` counts the
    # attempts that started.
    if session.execute(
        _update()
        .where(*queued, Job.attempts >= max_attempts)
        .values(
            status="failed",
            finished_at=now,
            step="failed",
            error=f"Gave up after {max_attempts} attempts; the worker running it was lost",
        )
    ).rowcount:  # type: ignore[attr-defined]
        logger.warning("job %s failed: out of attempts (%d)", job_id, max_attempts)
        return None
    claimed = session.execute(
        _update()
        .where(*queued)
        .values(
            status="running",
            attempts=Job.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            step="starting",
        )
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        job = session.get(Job, job_id)
        logger.info("job %s not claimed (status %s)", job_id, job.status if job else "missing")
        return None
    job = get_job(session, job_id)
    session.refresh(job)
    return Claim(
        job_id=job.id,
        model_id=job.model_id,
        version=job.version,
        params=PruneParams.model_validate(job.params),
        attempt=job.attempts,
    )


def record_progress(session: Session, job_id: str, fraction: float, step: str) -> bool:
    """Store progress and a heartbeat; return whether a client asked to cancel the job."""
    session.execute(
        _update()
        .where(Job.id == job_id, Job.status == "running")
        .values(progress=max(0.0, min(1.0, fraction)), step=step[:500], heartbeat_at=utcnow())
    )
    return is_cancel_requested(session, job_id)


def is_cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def heartbeat(session: Session, job_id: str) -> None:
    """Renew a running job's lease without changing its progress."""
    session.execute(
        _update().where(Job.id == job_id, Job.status == "running").values(heartbeat_at=utcnow())
    )


def request_cancel(session: Session, job_id: str) -> Job:
    """Cancel a queued job at once; ask a running one to stop at its next step.

    Raises:
        JobNotFound: no such job.
        JobFinished: the job already succeeded or failed.
    """
    session.execute(
        _update()
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=utcnow(), step="cancelled")
    )
    session.execute(
        _update().where(Job.id == job_id, Job.status == "running").values(cancel_requested=True)
    )
    job = get_job(session, job_id)
    session.refresh(job)
    if job.status in ("succeeded", "failed"):
        raise JobFinished(f"Job {job_id} already {job.status}; it cannot be cancelled")
    return job


def _finish(session: Session, job_id: str, status: str, **values: Any) -> bool:
    result = session.execute(
        _update()
        .where(Job.id == job_id, Job.status.in_(("queued", "running")))
        .values(status=status, finished_at=utcnow(), step=status, **values)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def mark_succeeded(
    session: Session, job_id: str, *, result_version: int, report: dict[str, Any]
) -> bool:
    return _finish(
        session, job_id, "succeeded", progress=1.0, result_version=result_version, report=report
    )


def mark_failed(session: Session, job_id: str, error: str) -> bool:
    return _finish(session, job_id, "failed", error=error[:4000])


def mark_cancelled(session: Session, job_id: str) -> bool:
    return _finish(session, job_id, "cancelled", error="cancelled on request")


def release_job(session: Session, job_id: str, *, attempt: int) -> bool:
    """running -> queued for a worker that shuts down; True when released (send its message).

    The released attempt is not counted: ``attempts`` budgets faults (a lost worker, a killed
    process), and a release is an orderly hand-back the job did not cause. Counting it would
    fail a long job after ``max_attempts`` rolling restarts of the workers. So ``attempts``
    counts the attempts that ran to an end or were lost, and the step records the release.
    Only attempt ``attempt`` is released: never a later one another worker started since. A
    job whose cancel was requested is cancelled instead.
    """
    running = (Job.id == job_id, Job.status == "running", Job.attempts == attempt)
    if is_cancel_requested(session, job_id):
        session.execute(
            _update()
            .where(*running)
            .values(status="cancelled", finished_at=utcnow(), step="cancelled")
        )
        return False
    released = session.execute(
        _update()
        .where(*running)
        .values(
            status="queued",
            attempts=Job.attempts - 1,
            progress=0.0,
            step=f"released by a worker shutting down (attempt {attempt} not counted)",
        )
    )
    return released.rowcount == 1  # type: ignore[attr-defined]


def recover_jobs(
    session: Session,
    *,
    lease_s: float,
    max_attempts: int,
    queues: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Find jobs whose worker died: re-queue them, or fail them past ``max_attempts``.

    Returns ``(requeued_ids, failed_ids)``; the caller sends a message for each re-queued job.
    """
    stale_before = utcnow() - timedelta(seconds=lease_s)
    query = select(Job).where(Job.status == "running", Job.heartbeat_at < stale_before)
    if queues is not None:
        query = query.where(Job.queue.in_(list(queues)))
    requeued: list[str] = []
    failed: list[str] = []
    for job in session.scalars(query).all():
        stale = (Job.id == job.id, Job.status == "running", Job.heartbeat_at < stale_before)
        if job.cancel_requested:
            session.execute(
                _update()
                .where(*stale)
                .values(status="cancelled", finished_at=utcnow(), step="cancelled")
            )
            continue
        if job.attempts >= max_attempts:
            outcome = session.execute(
                _update()
                .where(*stale)
                .values(
                    status="failed",
                    finished_at=utcnow(),
                    step="failed",
                    error=f"The worker running attempt {job.attempts} was lost (no heartbeat "
                    f"for {lease_s:g} s) and the job reached {max_attempts} attempts",
                )
            )
            if outcome.rowcount == 1:  # type: ignore[attr-defined]
                failed.append(job.id)
        else:
            outcome = session.execute(
                _update()
                .where(*stale)
                .values(status="queued", step=f"re-queued after attempt {job.attempts} was lost")
            )
            if outcome.rowcount == 1:  # type: ignore[attr-defined]
                requeued.append(job.id)
    return requeued, failed


def queued_job_ids(
    session: Session, queues: Sequence[str] | None = None, *, older_than_s: float | None = None
) -> list[tuple[str, str]]:
    """``(job_id, queue)`` of every queued job (created over ``older_than_s`` ago), oldest first."""
    query = select(Job.id, Job.queue).where(Job.status == "queued")
    if older_than_s is not None:
        query = query.where(Job.created_at < utcnow() - timedelta(seconds=older_than_s))
    if queues is not None:
        query = query.where(Job.queue.in_(list(queues)))
    return [(row[0], row[1]) for row in session.execute(query.order_by(Job.created_at)).all()]
