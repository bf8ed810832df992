"""Cancellation and lost workers, with real worker processes (killed for real)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import RunningWorker
from job_client import get_job, submit_ok, upload_dataset, upload_model, versions, wait_for

pytestmark = pytest.mark.timeout(400)


def _wait_running(api: str, job_id: str, min_progress: float = 0.0) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = get_job(api, job_id)
        if job["status"] == "running" and job["progress"] >= min_progress:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never ran")


def test_cancel_queued_and_running_jobs(
    job_env: dict[str, str],
    start_api: Callable[..., str],
    start_worker: Callable[..., RunningWorker],
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    env = {**job_env, "SPECTRAL_QUEUE_ROUTES": json.dumps({"pretrain": "slow-" + uuid.uuid4().hex})}
    slow_queue = json.loads(env["SPECTRAL_QUEUE_ROUTES"])["pretrain"]
    api = start_api(env)
    x, y = digits_data
    upload_model(api, "digits", digits_model_path)
    dataset_id = upload_dataset(api, x[:300], y[:300])
    pretrain = {
        "model_id": "digits",
        "method": "pretrain",
        "dataset_id": dataset_id,
        "percentile": 30,
        "epochs": 5000,
    }

    # Queued: nothing consumes the slow queue yet, so the job waits, then is cancelled.
    queued_id = submit_ok(api, pretrain)
    assert get_job(api, queued_id)["status"] == "queued"
    cancelled = httpx.post(f"{api}/jobs/{queued_id}/cancel").json()
    assert cancelled["status"] == "cancelled"

    # Running: a worker takes the next pretrain job; cancel it mid-training.
    start_worker(env, queues=[slow_queue])
    running_id = submit_ok(api, pretrain)
    _wait_running(api, running_id, min_progress=0.1)
    time.sleep(1.0)
    answer = httpx.post(f"{api}/jobs/{running_id}/cancel").json()
    assert answer["cancel_requested"] is True
    job = wait_for(api, running_id, timeout=60)
    assert job["status"] == "cancelled" and job["result"] is None

    # The worker saw the cancelled queued job's message and left it alone.
    first = get_job(api, queued_id)
    assert first["status"] == "cancelled" and first["attempts"] == 0
    finished = httpx.post(f"{api}/jobs/{running_id}/cancel")
    assert finished.status_code == 200 and finished.json()["status"] == "cancelled"
    assert versions(api, "digits") == [1]


def test_killed_worker_job_is_retried_on_a_new_worker(
    job_env: dict[str, str],
    redis_url: str,
    start_api: Callable[..., str],
    start_worker: Callable[..., RunningWorker],
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    env = {**job_env, "SPECTRAL_BROKER_URL": redis_url}
    api = start_api(env)
    x, y = digits_data
    upload_model(api, "digits", digits_model_path)
    dataset_id = upload_dataset(api, x[:300], y[:300])
    first = start_worker(env)
    job_id = submit_ok(
        api,
        {
            "model_id": "digits",
            "method": "pretrain",
            "dataset_id": dataset_id,
            "percentile": 30,
            "epochs": 40,
        },
    )
    _wait_running(api, job_id, min_progress=0.1)
    first.kill()
    lost = get_job(api, job_id)
    assert lost["status"] == "running" and lost["attempts"] == 1  # nobody knows yet

    start_worker(env)  # notices the expired lease, re-queues, runs attempt 2
    job = wait_for(api, job_id, timeout=240)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert versions(api, "digits") == [1, 2]


def test_lost_job_fails_after_max_attempts(
    job_env: dict[str, str],
    start_api: Callable[..., str],
    start_worker: Callable[..., RunningWorker],
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    env = {**job_env, "SPECTRAL_JOB_MAX_ATTEMPTS": "1"}
    api = start_api(env)
    x, y = digits_data
    upload_model(api, "digits", digits_model_path)
    dataset_id = upload_dataset(api, x[:300], y[:300])
    first = start_worker(env)
    job_id = submit_ok(
        api,
        {
            "model_id": "digits",
            "method": "pretrain",
            "dataset_id": dataset_id,
            "percentile": 30,
            "epochs": 5000,
        },
    )
    _wait_running(api, job_id, min_progress=0.1)
    first.kill()
    start_worker(env)
    job = wait_for(api, job_id, timeout=120)
    assert job["status"] == "failed"
    assert "was lost" in job["error"] and "1 attempts" in job["error"]
    assert versions(api, "digits") == [1]


def test_killed_pool_child_job_is_retried(
    job_env: dict[str, str],
    start_api: Callable[..., str],
    start_worker: Callable[..., RunningWorker],
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    """The OOM-killer case: only the process running the job dies; its worker lives on."""
    api = start_api(job_env)
    x, y = digits_data
    upload_model(api, "digits", digits_model_path)
    dataset_id = upload_dataset(api, x[:300], y[:300])
    worker = start_worker(job_env)
    job_id = submit_ok(
        api,
        {
            "model_id": "digits",
            "method": "pretrain",
            "dataset_id": dataset_id,
            "percentile": 30,
            "epochs": 40,
        },
    )
    _wait_running(api, job_id, min_progress=0.1)
    (child,) = worker.child_pids()
    os.kill(child, signal.SIGKILL)
    job = wait_for(api, job_id, timeout=240)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert worker.process.poll() is None and len(worker.child_pids()) == 2  # a fresh child
    assert versions(api, "digits") == [1, 2]


def test_soft_time_limit_fails_the_job(
    job_env: dict[str, str],
    start_api: Callable[..., str],
    start_worker: Callable[..., RunningWorker],
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    env = {**job_env, "SPECTRAL_JOB_SOFT_TIME_LIMIT_S": "4", "SPECTRAL_JOB_TIME_LIMIT_S": "60"}
    api = start_api(env)
    x, y = digits_data
    upload_model(api, "digits", digits_model_path)
    dataset_id = upload_dataset(api, x[:300], y[:300])
    start_worker(env)
    job_id = submit_ok(
        api,
        {
            "model_id": "digits",
            "method": "pretrain",
            "dataset_id": dataset_id,
            "percentile": 30,
            "epochs": 5000,
        },
    )
    job = wait_for(api, job_id, timeout=120)
    assert job["status"] == "failed"
    assert job["error"] == "Time limit of 4 s exceeded"
    assert versions(api, "digits") == [1]
