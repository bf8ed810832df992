"""Upload -> prune -> poll -> predict, through a real API server and a real Celery worker.

Runs twice: on the embedded SQLite broker and registry (what `spectral serve` uses), and on
Redis with a PostgreSQL registry (the deployment).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import keras
import numpy as np
import pytest

import spectral
from tests.support.http import (
    get_job,
    predict,
    submit,
    submit_ok,
    upload_dataset,
    upload_model,
    versions,
    wait_for,
)
from tests.support.worker import RunningWorker

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(params=["embedded", "redis-postgres"])
def stack(
    request: pytest.FixtureRequest,
    job_env: dict[str, str],
    start_api: Callable[..., str],
    start_worker: Callable[..., RunningWorker],
) -> str:
    env = dict(job_env)
    if request.param == "redis-postgres":
        env["SPECTRAL_BROKER_URL"] = request.getfixturevalue("redis_url")
        env["SPECTRAL_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    api = start_api(env)
    start_worker(env, wait=False)  # warms up while the test uploads
    return api


def test_prune_jobs_end_to_end(
    stack: str,
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    api = stack
    x, y = digits_data
    name = f"digits-{uuid.uuid4().hex[:8]}"
    upload_model(api, name, digits_model_path)
    dataset_id = upload_dataset(api, x[:600], y[:600])
    assert httpx.get(f"{api}/datasets/{dataset_id}").json()["x_shape"] == [600, 64]

    # Percentile: the new version predicts exactly what the library's pruned model predicts.
    job_id = submit_ok(api, {"model_id": name, "method": "percentile", "percentile": 40})
    job = wait_for(api, job_id)
    assert job["status"] == "succeeded", job
    assert job["result"] == {"model_id": name, "version": 2, "promotion": None}
    assert job["progress"] == 1.0 and job["attempts"] == 1
    assert job["started_at"] and job["finished_at"]
    expected = spectral.prune_percentile(keras.saving.load_model(digits_model_path), 40)
    np.testing.assert_allclose(
        predict(api, name, 2, x[:32]), expected.predict(x[:32], verbose=0), rtol=1e-5, atol=1e-6
    )
    version = httpx.get(f"{api}/models/{name}/versions/2").json()
    assert version["parent_version"] == 1
    assert version["lineage"]["job_id"] == job_id and version["lineage"]["method"] == "percentile"
    report = httpx.get(f"{api}/models/{name}/versions/2/report").json()
    assert report["params_after"] < report["params_before"]
    assert report["artifact_bytes_after"] < report["artifact_bytes_before"]
    png = httpx.get(f"{api}/models/{name}/versions/2/report.png")
    # The worker drew the library's own report image from this very report.
    assert png.status_code == 200 and png.content == spectral.plot_report(report)

    # Metric-based search on version 1, with the dataset.
    body: dict[str, Any] = {
        "model_id": name,
        "version": 1,
        "method": "metric",
        "dataset_id": dataset_id,
        "max_delta_percent": 5,
        "percentile_step": 20,
    }
    job_id = submit_ok(api, body, key="metric-1")
    assert submit_ok(api, body, key="metric-1") == job_id  # same key, same body: same job
    conflict = submit(api, {**body, "max_delta_percent": 6}, key="metric-1")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    job = wait_for(api, job_id)
    assert job["status"] == "succeeded", job
    assert job["report"]["metric_after"] >= 0.95 * job["report"]["metric_before"] - 1e-9
    assert job["report"]["evaluations"]
    assert versions(api, name) == [1, 2, 3]  # one version per job, even for the repeated POST
    assert predict(api, name, 3, x[:4]).shape == (4, 10)

    listed = httpx.get(f"{api}/jobs", params={"model_id": name, "status": "succeeded"}).json()
    assert listed["count"] == 2


def test_bad_jobs_fail_clearly(
    stack: str, digits_model_path: Path, digits_data: tuple[np.ndarray, np.ndarray]
) -> None:
    api = stack
    x, y = digits_data
    name = f"digits-{uuid.uuid4().hex[:8]}"
    upload_model(api, name, digits_model_path)

    bad = submit(api, {"model_id": name, "percentile": 150})
    assert bad.status_code == 422
    assert "less than or equal to 100" in bad.json()["error"]["message"]
    missing = submit(api, {"model_id": "no-such-model", "percentile": 10})
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "model_not_found")
    no_data = submit(api, {"model_id": name, "method": "metric", "dataset_id": "ds_nope"})
    assert (no_data.status_code, no_data.json()["error"]["code"]) == (404, "dataset_not_found")
    assert httpx.get(f"{api}/jobs/nope").json()["error"]["code"] == "job_not_found"

    wrong_shape = upload_dataset(api, x[:100, :10], y[:100])
    job_id = submit_ok(api, {"model_id": name, "method": "metric", "dataset_id": wrong_shape})
    job = wait_for(api, job_id)
    assert job["status"] == "failed" and job["result"] is None
    assert "Dataset x has samples of shape [10] but the model expects [64]" in job["error"]
    assert versions(api, name) == [1]
    assert get_job(api, job_id)["attempts"] == 1  # a bad input is not retried


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_reconstruct_job_end_to_end(
    stack: str, digits_model_path: Path, digits_data: tuple[np.ndarray, np.ndarray]
) -> None:
    """A percentile job that re-fits the consumers on a calibration upload, through a real
    worker: the new version is the library's reconstructed model, and the report says so."""
    api = stack
    x, y = digits_data
    name = f"digits-{uuid.uuid4().hex[:8]}"
    upload_model(api, name, digits_model_path)
    dataset_id = upload_dataset(api, x[:300], y[:300])
    calibration_id = upload_dataset(api, x[300:800], y[300:800])

    refused = submit(api, {"model_id": name, "percentile": 60, "reconstruct": "least_squares"})
    assert refused.status_code == 422
    assert "pass calibration_dataset or dataset_id" in refused.json()["error"]["message"]
    unknown = submit(
        api,
        {"model_id": name, "percentile": 60, "reconstruct": "mean", "calibration_dataset": "ds_x"},
    )
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "dataset_not_found")

    body = {
        "model_id": name,
        "method": "percentile",
        "percentile": 60,
        "dataset_id": dataset_id,
        "reconstruct": "least_squares",
        "calibration_dataset": calibration_id,
    }
    job = wait_for(api, submit_ok(api, body))
    assert job["status"] == "succeeded", job
    assert job["params"]["reconstruct"] == "least_squares"
    report = job["report"]
    assert report["reconstruction_method"] == "least_squares"
    assert (report["calibration_rows"], report["calibration_dataset"]) == (500, calibration_id)
    assert report["metric_before"] is not None and report["metric_after"] is not None
    expected, _ = spectral.prune(
        keras.saving.load_model(digits_model_path),
        percentile=60,
        calibration={"x": x[300:800]},
        reconstruct="least_squares",
    )
    np.testing.assert_allclose(
        predict(api, name, 2, x[:32]), expected.predict(x[:32], verbose=0), rtol=1e-4, atol=1e-5
    )
    assert httpx.get(f"{api}/models/{name}/versions/2").json()["lineage"]["params"] == job["params"]
