"""Job creation and the job state machine (service/jobs/), on real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.db import Database
from service.errors import IdempotencyConflict, JobFinished, JobNotFound
from service.jobs import state, submission
from service.jobs.params import PruneRequest
from service.jobs.table import get_job, list_jobs
from service.settings import Settings


def _request(**overrides: object) -> PruneRequest:
    body = {"model_id": "digits", "method": "percentile", "percentile": 40.0, **overrides}
    return PruneRequest.model_validate(body)


def _create(db: Database, settings: Settings, key: str | None = None, **overrides: object) -> str:
    with db.session() as session:
        created = submission.create_job(
            session, _request(**overrides), version=1, settings=settings, idempotency_key=key
        )
    return created.job.id


def test_create_get_and_list(db: Database, job_settings: Settings) -> None:
    model_id = f"m-{job_settings.default_queue}"
    first = _create(db, job_settings, model_id=model_id)
    second = _create(db, job_settings, percentile=60.0, model_id=f"{model_id}-other")
    with db.session() as session:
        job = get_job(session, first)
        assert (job.status, job.progress, job.attempts) == ("queued", 0.0, 0)
        assert job.queue == job_settings.default_queue
        assert job.params == {
            "method": "percentile",
            "percentile": 40.0,
            "batch_size": 32,
            "scope": "global",
            "min_units": 1,
        }
        assert [j.id for j in list_jobs(session, model_id=model_id)] == [first]
        other = list_jobs(session, model_id=f"{model_id}-other", status="queued")
        assert [j.id for j in other] == [second]
        assert list_jobs(session, model_id=model_id, status="running") == []
        with pytest.raises(JobNotFound):
            get_job(session, "nope")


def test_idempotency_key(db: Database, job_settings: Settings) -> None:
    first = _create(db, job_settings, key="k1")
    assert _create(db, job_settings, key="k1") == first
    with db.session() as session, pytest.raises(IdempotencyConflict):
        submission.create_job(
            session,
            _request(percentile=41.0),
            version=1,
            settings=job_settings,
            idempotency_key="k1",
        )
    assert _create(db, job_settings, key="k2") != first


def test_concurrent_requests_with_one_key_make_one_job(
    db: Database, job_settings: Settings
) -> None:
    # Parallel retries of one request (a CI pipeline retrying on a timeout) all race past the
    # "key seen?" check; the unique key must turn every loser into a replay, not an error.
    threads = 6
    barrier = threading.Barrier(threads)
    model_id = f"race-{uuid.uuid4().hex[:8]}"

    def submit() -> str:
        barrier.wait()
        return _create(db, job_settings, key=model_id, model_id=model_id)

    with ThreadPoolExecutor(threads) as pool:
        job_ids = list(pool.map(lambda _: submit(), range(threads)))
    assert len(set(job_ids)) == 1
    with db.session() as session:
        assert len(list_jobs(session, model_id=model_id)) == 1


def test_claim_runs_a_job_once(db: Database, job_settings: Settings) -> None:
    job_id = _create(db, job_settings)
    with db.session() as session:
        claim = state.claim_job(session, job_id, max_attempts=3)
    assert claim is not None and claim.attempt == 1 and claim.params.percentile == 40.0
    with db.session() as session:
        assert state.claim_job(session, job_id, max_attempts=3) is None  # duplicate message
        assert get_job(session, job_id).status == "running"
        assert state.record_progress(session, job_id, 0.5, "halfway") is False
        assert state.mark_succeeded(session, job_id, result_version=2, report={"a": 1})
        assert not state.mark_failed(session, job_id, "late")  # finished jobs stay finished
        job = get_job(session, job_id)
    assert job.status == "succeeded" and job.result_version == 2
    assert job.progress == 1.0 and job.finished_at is not None and job.error is None


def test_cancel_queued_never_starts(db: Database, job_settings: Settings) -> None:
    job_id = _create(db, job_settings)
    with db.session() as session:
        assert state.request_cancel(session, job_id).status == "cancelled"
    with db.session() as session:
        assert state.claim_job(session, job_id, max_attempts=3) is None
        assert get_job(session, job_id).status == "cancelled"


def test_cancel_running_sets_the_flag(db: Database, job_settings: Settings) -> None:
    job_id = _create(db, job_settings)
    with db.session() as session:
        state.claim_job(session, job_id, max_attempts=3)
    with db.session() as session:
        job = state.request_cancel(session, job_id)
    assert job.status == "running" and job.cancel_requested
    with db.session() as session:
        assert state.record_progress(session, job_id, 0.3, "step") is True
        assert state.mark_cancelled(session, job_id)
        assert get_job(session, job_id).status == "cancelled"
        with pytest.raises(JobNotFound):
            state.request_cancel(session, "nope")


def test_cancel_finished_is_refused(db: Database, job_settings: Settings) -> None:
    job_id = _create(db, job_settings)
    with db.session() as session:
        state.claim_job(session, job_id, max_attempts=3)
        state.mark_failed(session, job_id, "boom")
    with db.session() as session, pytest.raises(JobFinished):
        state.request_cancel(session, job_id)


def test_recover_requeues_then_fails_lost_jobs(db: Database, job_settings: Settings) -> None:
    mine = [job_settings.default_queue]
    job_id = _create(db, job_settings)
    fresh = _create(db, job_settings, percentile=10.0)
    with db.session() as session:
        state.claim_job(session, job_id, max_attempts=2)
    time.sleep(0.3)
    with db.session() as session:
        state.claim_job(session, fresh, max_attempts=2)
        requeued, failed = state.recover_jobs(session, lease_s=0.2, max_attempts=2, queues=mine)
    assert (requeued, failed) == ([job_id], [])  # the fresh heartbeat keeps its lease
    with db.session() as session:
        job = get_job(session, job_id)
        assert job.status == "queued" and "re-queued" in job.step
        assert state.queued_job_ids(session, mine) == [(job_id, job_settings.default_queue)]
        assert state.claim_job(session, job_id, max_attempts=2) is not None  # attempt 2
    time.sleep(0.3)
    with db.session() as session:
        requeued, failed = state.recover_jobs(session, lease_s=0.2, max_attempts=2, queues=mine)
    assert job_id in failed and job_id not in requeued
    with db.session() as session:
        job = get_job(session, job_id)
    assert job.status == "failed" and job.attempts == 2 and "was lost" in (job.error or "")


def test_claim_past_max_attempts_fails(db: Database, job_settings: Settings) -> None:
    job_id = _create(db, job_settings)
    with db.session() as session:
        state.claim_job(session, job_id, max_attempts=1)
    time.sleep(0.3)
    with db.session() as session:
        # Recovery with a looser limit re-queues it; the claim enforces the real limit.
        state.recover_jobs(
            session, lease_s=0.2, max_attempts=5, queues=[job_settings.default_queue]
        )
    with db.session() as session:
        assert state.claim_job(session, job_id, max_attempts=1) is None
        job = get_job(session, job_id)
    assert job.status == "failed" and "Gave up after 1 attempts" in (job.error or "")
    # The refused claim is not an attempt: one attempt started, one is counted.
    assert job.attempts == 1
