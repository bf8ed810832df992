"""The registry, predict and jobs flow with artifacts in an S3 bucket (a real moto server
process), the API and the worker in separate processes with data dirs of their own: they share
nothing but PostgreSQL, Redis and the bucket."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import keras
import numpy as np
import pytest

import spectral
from tests.support.digits import npz_bytes
from tests.support.http import predict, submit_ok, upload_dataset, upload_model, wait_for
from tests.support.s3 import S3Server
from tests.support.worker import RunningWorker

pytestmark = pytest.mark.timeout(300)

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _stored_files(data_dir: Path) -> list[Path]:
    """Files in a data dir that look like stored blobs: under artifacts/ or datasets/, or
    named by a sha256 anywhere."""
    if not data_dir.exists():
        return []
    return [
        path
        for path in data_dir.rglob("*")
        if path.is_file()
        and (
            {"artifacts", "datasets"} & set(path.relative_to(data_dir).parts[:-1])
            or _SHA256.fullmatch(path.name)
        )
    ]


def test_flow_with_artifacts_in_a_bucket(
    s3_server: S3Server,
    s3_env: dict[str, str],
    job_env: dict[str, str],
    redis_url: str,
    postgres_url: str,
    start_api: Callable[..., str],
    start_worker: Callable[..., RunningWorker],
    tmp_path: Path,
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    shared = {
        **job_env,
        **s3_env,
        "SPECTRAL_BROKER_URL": redis_url,
        "SPECTRAL_DATABASE_URL": postgres_url,
    }
    worker_dir, api_dir = tmp_path / "worker-data", tmp_path / "api-data"
    start_worker({**shared, "SPECTRAL_DATA_DIR": str(worker_dir)}, wait=False)
    api = start_api({**shared, "SPECTRAL_DATA_DIR": str(api_dir)})
    x, y = digits_data
    name = f"digits-{uuid.uuid4().hex[:8]}"

    v1 = upload_model(api, name, digits_model_path)
    original = keras.saving.load_model(digits_model_path)
    np.testing.assert_allclose(
        predict(api, name, 1, x[:8]), original.predict(x[:8], verbose=0), rtol=1e-5, atol=1e-6
    )
    dataset_id = upload_dataset(api, x[:300], y[:300])

    # The worker reads the model and the dataset from the bucket, and writes the new version
    # and its report image there; the API serves them from there.
    body = {"model_id": name, "method": "percentile", "percentile": 40, "dataset_id": dataset_id}
    job = wait_for(api, submit_ok(api, body))
    assert job["status"] == "succeeded", job
    assert job["result"]["version"] == 2
    assert job["report"]["metric_before"] is not None  # it did evaluate on the dataset
    expected = spectral.prune_percentile(keras.saving.load_model(digits_model_path), 40)
    np.testing.assert_allclose(
        predict(api, name, 2, x[:16]), expected.predict(x[:16], verbose=0), rtol=1e-5, atol=1e-6
    )
    report = httpx.get(f"{api}/models/{name}/versions/2/report", timeout=30).json()
    png = httpx.get(f"{api}/models/{name}/versions/2/report.png", timeout=30)
    assert png.status_code == 200 and png.content == spectral.plot_report(report)
    dataset = httpx.get(f"{api}/datasets/{dataset_id}", timeout=30).json()

    bucket = s3_env["SPECTRAL_ARTIFACT_URL"].split("/")[2]
    keys = s3_server.keys(bucket)
    v2 = httpx.get(f"{api}/models/{name}/versions/2", timeout=30).json()
    for kind, sha in [
        ("artifacts", v1["sha256"]),
        ("artifacts", v2["sha256"]),
        ("datasets", dataset["sha256"]),
    ]:
        assert f"spectral/{kind}/{sha[:2]}/{sha}" in keys
    assert len([key for key in keys if key.startswith("spectral/artifacts/")]) == 3  # + the PNG
    assert _stored_files(api_dir) == [] and _stored_files(worker_dir) == []

    # The bucket goes away: reads and writes answer 503, not 500, and name no secret.
    client = s3_server.client()
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys]})
    client.delete_bucket(Bucket=bucket)
    gone = httpx.get(f"{api}/models/{name}/versions/2/report.png", timeout=60)
    refused = httpx.post(
        f"{api}/datasets",
        files={"file": ("d.npz", npz_bytes(x[:50], y[:50]), "application/octet-stream")},
        timeout=60,
    )
    for response in (gone, refused):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "artifact_store_unavailable"
        assert s3_env["AWS_SECRET_ACCESS_KEY"] not in response.text
