"""A worker shutting down: the release of a running job at its next step (through the real
signal handler and the real runner), the release transition's conditions, and the parent's
hard stop of a pool child that does not reach a step in time (a real process, SIGKILLed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker import state as celery_state

from service.db import Database, upgrade_database
from service.jobs import state, submission
from service.jobs.params import PruneRequest
from service.jobs.table import Job, get_job
from service.registry import Registry
from service.settings import Settings
from tests.support.digits import digits_npz
from tests.worker.test_runner import _dataset
from worker import shutdown
from worker.runner import execute_job


@pytest.fixture
def env(tmp_path: Path, model_bytes: bytes) -> tuple[Settings, Registry]:
    settings = Settings(data_dir=tmp_path, job_heartbeat_s=0.2, job_shutdown_s=0.2)
    upgrade_database(settings)
    registry = Registry.from_settings(settings, Database(settings))
    registry.create_model("digits", model_bytes)
    return settings, registry


@pytest.fixture
def release_handler() -> Iterator[None]:
    previous = signal.getsignal(shutdown.RELEASE_SIGNAL)
    shutdown.install_child_handler()
    yield
    signal.signal(shutdown.RELEASE_SIGNAL, previous)
    shutdown._release_requested.clear()


def _submit(registry: Registry, settings: Settings, **body: object) -> str:
    request = PruneRequest.model_validate({"model_id": "digits", **body})
    new = submission.submit_job(registry, request, settings=settings, enqueue=lambda j, q: None)
    return new.job.id


def _job(registry: Registry, job_id: str) -> Job:
    with registry.database.session() as session:
        return get_job(session, job_id)


def _sent_to(sent: list[tuple[str, str]]) -> Any:
    return lambda job_id, queue: sent.append((job_id, queue))


def _claimed_job(registry: Registry, settings: Settings) -> str:
    job_id = _submit(registry, settings, method="percentile", percentile=30)
    with registry.database.session() as session:
        assert state.claim_job(session, job_id, max_attempts=3) is not None
    return job_id


def test_release_signal_hands_the_running_job_back_at_its_next_epoch(
    env: tuple[Settings, Registry], release_handler: None
) -> None:
    settings, registry = env
    dataset_id = _dataset(settings, registry, digits_npz(n=200))
    job_id = _submit(
        registry, settings, method="pretrain", percentile=30, dataset_id=dataset_id, epochs=2000
    )
    sent: list[tuple[str, str]] = []
    runner = threading.Thread(target=execute_job, args=(job_id, settings, _sent_to(sent)))
    runner.start()
    while _job(registry, job_id).progress < 0.1:  # inside training
        time.sleep(0.05)
    signalled = time.monotonic()
    os.kill(os.getpid(), shutdown.RELEASE_SIGNAL)  # what the worker's parent sends its children
    runner.join(timeout=60)
    released_in = time.monotonic() - signalled
    job = _job(registry, job_id)
    assert job.status == "queued" and job.attempts == 0, (job.status, job.error)
    assert job.step == "released by a worker shutting down (attempt 1 not counted)"
    assert job.result_version is None and job.finished_at is None
    assert sent == [(job_id, "spectral")]  # its message, sent again
    assert [v.version for v in registry.get_model("digits").versions] == [1]
    assert released_in < 10  # one epoch of 200 samples, not the 2000
    with registry.database.session() as session:
        again = state.claim_job(session, job_id, max_attempts=1)  # the release did not count
    assert again is not None and again.attempt == 1


def test_a_job_arriving_after_the_release_request_stays_queued_for_the_next_worker(
    env: tuple[Settings, Registry], release_handler: None
) -> None:
    settings, registry = env
    job_id = _submit(registry, settings, method="percentile", percentile=30)
    shutdown._release_requested.set()
    sent: list[tuple[str, str]] = []
    execute_job(job_id, settings, _sent_to(sent))
    job = _job(registry, job_id)
    assert job.status == "queued" and job.attempts == 0
    assert sent == [(job_id, "spectral")]


def test_release_applies_only_to_its_own_attempt_of_a_running_job(
    env: tuple[Settings, Registry],
) -> None:
    settings, registry = env
    job_id = _claimed_job(registry, settings)
    with registry.database.session() as session:
        assert not state.release_job(session, job_id, attempt=2)  # a later attempt's, not this
        assert state.release_job(session, job_id, attempt=1)
        assert not state.release_job(session, job_id, attempt=1)  # queued now: nothing to release
    assert _job(registry, job_id).status == "queued"


def test_release_of_a_job_with_a_cancel_request_cancels_it(env: tuple[Settings, Registry]) -> None:
    settings, registry = env
    job_id = _claimed_job(registry, settings)
    with registry.database.session() as session:
        state.request_cancel(session, job_id)
        assert not state.release_job(session, job_id, attempt=1)
    job = _job(registry, job_id)
    assert job.status == "cancelled" and job.finished_at is not None


class _Request:
    """What the parent reads of a running task: its arguments."""

    def __init__(self, job_id: str) -> None:
        self.args = [job_id]


def test_parent_kills_a_child_that_ignores_the_release_and_releases_its_job(
    env: tuple[Settings, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, registry = env
    monkeypatch.setattr(shutdown, "RELEASE_GRACE_S", 0.3)
    job_id = _claimed_job(registry, settings)
    # A pool child stuck in a long step: it never reaches a step boundary.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            # No handler for the release signal: its default is to ignore it.
            "import time; print('ready', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    sent: list[tuple[str, list[str], str]] = []
    app = SimpleNamespace(send_task=lambda name, args, queue: sent.append((name, args, queue)))
    worker = SimpleNamespace(pool=SimpleNamespace(info={"processes": [child.pid]}), app=app)
    request = _Request(job_id)
    celery_state.active_requests.add(request)
    try:
        started = time.monotonic()
        shutdown.shutdown_clock(worker, settings)
        took = time.monotonic() - started
    finally:
        celery_state.active_requests.discard(request)
        if child.poll() is None:
            child.kill()
    assert child.wait(timeout=5) == -signal.SIGKILL
    assert took < 0.2 + 0.3 + 5
    job = _job(registry, job_id)
    assert job.status == "queued" and job.attempts == 0
    assert sent == [("spectral.run_pruning_job", [job_id], "spectral")]


def test_parent_leaves_children_alone_when_no_job_runs(env: tuple[Settings, Registry]) -> None:
    settings, _ = env
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    worker = SimpleNamespace(pool=SimpleNamespace(info={"processes": [child.pid]}), app=None)
    try:
        shutdown.shutdown_clock(worker, settings)
        assert child.poll() is None  # an idle child exits with the pool, not by our signal
    finally:
        child.kill()
        child.wait()
