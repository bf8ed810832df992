"""The worker's resilience parts on real databases: transitions that wait out a PostgreSQL
restart, and the re-sending of queued jobs whose message was lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from service.db import Database, upgrade_database
from service.jobs import state, submission
from service.jobs.params import PruneRequest
from service.settings import Settings
from tests.support.chaos import PrivatePostgres
from worker.lifecycle import QueuedResender
from worker.sessions import in_transaction

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    try:
        cluster = PrivatePostgres()
        cluster.init()
    except (RuntimeError, OSError, KeyError) as exc:
        pytest.skip(f"cannot create a private PostgreSQL cluster here: {exc}")
    yield cluster
    cluster.destroy()


def _select_one(session: object) -> int:
    return int(session.execute(text("SELECT 1")).scalar_one())  # type: ignore[attr-defined]


def test_transition_waits_out_a_postgres_restart(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=private_postgres.url, db_retry_s=30)
    assert in_transaction(settings, _select_one) == 1  # a pooled connection, soon stale
    private_postgres.stop("immediate")
    restarter = threading.Timer(2.0, private_postgres.start)
    restarter.start()
    started = time.monotonic()
    try:
        assert in_transaction(settings, _select_one) == 1
    finally:
        restarter.join()
    assert time.monotonic() - started >= 1.5  # it did wait for the server


def test_transition_gives_up_after_db_retry_s(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=private_postgres.url, db_retry_s=1)
    private_postgres.stop("immediate")
    started = time.monotonic()
    with pytest.raises(OperationalError):
        in_transaction(settings, _select_one)
    assert time.monotonic() - started < 10


def test_a_statement_error_is_not_retried(db: Database) -> None:
    calls = []

    def bad(session: object) -> None:
        calls.append(1)
        session.execute(text("SELECT no_such_column FROM jobs"))  # type: ignore[attr-defined]

    with pytest.raises(Exception, match="no_such_column"):
        db.transaction(bad, retry_s=30)
    assert calls == [1]


def test_queued_jobs_are_sent_again_once_per_period(db: Database, job_settings: Settings) -> None:
    settings = job_settings.model_copy(update={"job_resend_queued_s": 0.5})
    upgrade_database(settings)
    request = PruneRequest.model_validate(
        {"model_id": "digits", "method": "percentile", "percentile": 40.0}
    )
    with db.session() as session:
        ids = [
            submission.create_job(session, request, version=1, settings=settings).job.id
            for _ in range(3)
        ]
    sent: list[tuple[str, str]] = []
    resend = QueuedResender(
        settings, lambda job_id, queue: sent.append((job_id, queue)), [settings.default_queue]
    )
    mine = {job_id: settings.default_queue for job_id in ids}

    assert resend() == []  # too young: their first message is surely still on its way
    time.sleep(0.6)
    assert sorted(resend()) == sorted(ids)
    assert set(sent) == set(mine.items())
    assert resend() == []  # sent a moment ago
    with db.session() as session:
        assert state.claim_job(session, ids[0], max_attempts=3) is not None
        state.request_cancel(session, ids[1])
    time.sleep(0.6)
    assert resend() == [ids[2]]  # running and cancelled jobs need no message
