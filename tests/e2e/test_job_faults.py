"""Cancellation, time limits and lost workers, with real worker processes (killed for real)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.http import get_job, submit_ok, upload_dataset, upload_model, versions, wait_for
from tests.support.worker import RunningWorker

pytestmark = pytest.mark.timeout(400)


@dataclass
class Stack:
    """An API with the digits model (version 1) and a small digits dataset uploaded."""

    api: str
    env: dict[str, str]
    dataset_id: str
    start_worker: Callable[..., RunningWorker]

    def pretrain(self, epochs: int) -> str:
        body = {
            "model_id": "digits",
            "method": "pretrain",
            "dataset_id": self.dataset_id,
            "percentile": 30,
            "epochs": epochs,
        }
        return submit_ok(self.api, body)

    def wait_running(self, job_id: str) -> None:
        """Until the job is inside the library (past loading), where it can be interrupted."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = get_job(self.api, job_id)
            if job["status"] == "running" and job["progress"] >= 0.1:
                return
            assert job["status"] in ("queued", "running"), job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} never ran")


@pytest.fixture
def make_stack(
    job_env: dict[str, str],
    start_api: Callable[..., str],
    start_worker: Callable[..., RunningWorker],
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> Callable[..., Stack]:
    def make(**overrides: str) -> Stack:
        env = {**job_env, **overrides}
        api = start_api(env)
        upload_model(api, "digits", digits_model_path)
        x, y = digits_data
        return Stack(api, env, upload_dataset(api, x[:300], y[:300]), start_worker)

    return make


def test_cancel_queued_and_running_jobs(make_stack: Callable[..., Stack]) -> None:
    slow_queue = f"slow-{uuid.uuid4().hex}"
    stack = make_stack(SPECTRAL_QUEUE_ROUTES=json.dumps({"pretrain": slow_queue}))
    api = stack.api

    # Queued: nothing consumes the slow queue yet, so the job waits, then is cancelled.
    queued_id = stack.pretrain(epochs=5000)
    assert get_job(api, queued_id)["status"] == "queued"
    assert httpx.post(f"{api}/jobs/{queued_id}/cancel").json()["status"] == "cancelled"

    # Running: a worker takes the next pretrain job; cancel it mid-training.
    stack.start_worker(stack.env, queues=[slow_queue])
    running_id = stack.pretrain(epochs=5000)
    stack.wait_running(running_id)
    time.sleep(1.0)
    assert httpx.post(f"{api}/jobs/{running_id}/cancel").json()["cancel_requested"] is True
    job = wait_for(api, running_id, timeout=60)
    assert job["status"] == "cancelled" and job["result"] is None

    # The worker got the cancelled queued job's message too, and left it alone.
    first = get_job(api, queued_id)
    assert first["status"] == "cancelled" and first["attempts"] == 0
    again = httpx.post(f"{api}/jobs/{running_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert versions(api, "digits") == [1]


def test_killed_worker_job_is_retried_on_a_new_worker(
    make_stack: Callable[..., Stack], redis_url: str
) -> None:
    stack = make_stack(SPECTRAL_BROKER_URL=redis_url)
    first = stack.start_worker(stack.env)
    job_id = stack.pretrain(epochs=40)
    stack.wait_running(job_id)
    first.kill()
    lost = get_job(stack.api, job_id)
    assert lost["status"] == "running" and lost["attempts"] == 1  # nobody knows yet

    stack.start_worker(stack.env)  # notices the expired lease, re-queues, runs attempt 2
    job = wait_for(stack.api, job_id, timeout=240)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert versions(stack.api, "digits") == [1, 2]


def test_killed_pool_child_job_is_retried(make_stack: Callable[..., Stack]) -> None:
    """The OOM-killer case: only the process running the job dies; its worker lives on."""
    stack = make_stack()
    worker = stack.start_worker(stack.env)
    job_id = stack.pretrain(epochs=40)
    stack.wait_running(job_id)
    (child,) = worker.child_pids()
    os.kill(child, signal.SIGKILL)
    job = wait_for(stack.api, job_id, timeout=240)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert worker.process.poll() is None and len(worker.child_pids()) == 2  # a fresh child
    assert versions(stack.api, "digits") == [1, 2]


def test_lost_job_fails_after_max_attempts(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(SPECTRAL_JOB_MAX_ATTEMPTS="1")
    first = stack.start_worker(stack.env)
    job_id = stack.pretrain(epochs=5000)
    stack.wait_running(job_id)
    first.kill()
    stack.start_worker(stack.env)
    job = wait_for(stack.api, job_id, timeout=120)
    assert job["status"] == "failed"
    assert "was lost" in job["error"] and "1 attempts" in job["error"]
    assert versions(stack.api, "digits") == [1]


def test_soft_time_limit_fails_the_job(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(SPECTRAL_JOB_SOFT_TIME_LIMIT_S="4", SPECTRAL_JOB_TIME_LIMIT_S="60")
    stack.start_worker(stack.env)
    job_id = stack.pretrain(epochs=5000)
    job = wait_for(stack.api, job_id, timeout=120)
    assert job["status"] == "failed"
    assert job["error"] == "Time limit of 4 s exceeded"
    assert versions(stack.api, "digits") == [1]
