"""Database access for worker processes, and the recovery of jobs whose worker was lost.

Each process opens its own engine: a child forked by the Celery pool drops the connections it
inherited from its parent instead of sharing them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy.orm import Session

from service import jobs
from service.db import Database
from service.settings import Settings

logger = logging.getLogger(__name__)

_databases: dict[tuple[int, str], Database] = {}
_lock = threading.Lock()


def database(settings: Settings) -> Database:
    """This process's `Database` for ``settings`` (created on first use)."""
    key = (os.getpid(), settings.resolved_database_url)
    with _lock:
        db = _databases.get(key)
        if db is None:
            db = Database(settings)
            _databases[key] = db
        return db


def _forget_parent_engines() -> None:
    for (pid, _), db in list(_databases.items()):
        if pid != os.getpid():
            db.engine.dispose(close=False)
    _databases.clear()


os.register_at_fork(after_in_child=_forget_parent_engines)


@contextmanager
def job_session(settings: Settings) -> Iterator[Session]:
    """A session that commits on success (one short transaction per job transition)."""
    with database(settings).session() as session:
        yield session


def fail_job(settings: Settings, job_id: str, error: str) -> None:
    """Best effort: mark a job failed (used when a task dies outside `execute_job`)."""
    try:
        with job_session(settings) as session:
            if jobs.mark_failed(session, job_id, error):
                logger.error("job %s failed: %s", job_id, error)
    except Exception:
        logger.exception("could not mark job %s failed", job_id)


def recover_lost_jobs(
    settings: Settings,
    enqueue: jobs.Enqueue,
    *,
    queues: Sequence[str] | None = None,
    resend_queued: bool = False,
) -> tuple[list[str], list[str]]:
    """Re-queue (or fail) running jobs whose heartbeat expired and send their messages again.

    With ``resend_queued`` (at worker start), also re-send every queued job: its message may have
    been lost with a broker or worker. A duplicate message is harmless, because only one
    delivery can claim a queued job.
    """
    with job_session(settings) as session:
        requeued, failed = jobs.recover_jobs(
            session,
            lease_s=settings.job_lease_s,
            max_attempts=settings.job_max_attempts,
            queues=queues,
        )
        to_send = (
            jobs.queued_job_ids(session, queues)
            if resend_queued
            else [(job_id, session.get(jobs.Job, job_id).queue) for job_id in requeued]  # type: ignore[union-attr]
        )
    for job_id, queue in to_send:
        enqueue(job_id, queue)
    if requeued or failed or to_send:
        logger.warning(
            "recovery: re-queued %s, failed %s, sent %d message(s)", requeued, failed, len(to_send)
        )
    return requeued, failed
