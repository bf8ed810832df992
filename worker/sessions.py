"""Database access for worker processes.

Each process opens its own engine: a child forked by the Celery pool drops the connections it
inherited from its parent instead of sharing them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy.orm import Session

from service.db import Database
from service.jobs import state
from service.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


def in_transaction(settings: Settings, work: Callable[[Session], T]) -> T:
    """``work(session)`` in one transaction, waiting out a dropped database connection (a
    restart) for up to ``settings.db_retry_s``: a job transition outlives a short outage."""
    return database(settings).transaction(work, retry_s=settings.db_retry_s)


def fail_job(settings: Settings, job_id: str, error: str) -> None:
    """Best effort: mark a job failed, logging (not raising) when even that fails."""
    try:
        if in_transaction(settings, lambda session: state.mark_failed(session, job_id, error)):
            logger.error("job %s failed: %s", job_id, error)
    except Exception:
        logger.exception("could not mark job %s failed", job_id)
