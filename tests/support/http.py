"""HTTP helpers for the end-to-end job tests (a thin client over the public API)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.digits import npz_bytes

TERMINAL = {"succeeded", "failed", "cancelled"}


def upload_model(api: str, name: str, path: Path) -> dict[str, Any]:
    with open(path, "rb") as file:
        response = httpx.post(
            f"{api}/models",
            data={"name": name},
            files={"file": (path.name, file, "application/octet-stream")},
            timeout=60,
        )
    assert response.status_code == 201, response.text
    return dict(response.json())


def upload_dataset(api: str, x: np.ndarray, y: np.ndarray) -> str:
    response = httpx.post(
        f"{api}/datasets",
        files={"file": ("data.npz", npz_bytes(x, y), "application/octet-stream")},
        timeout=60,
    )
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def submit(api: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(f"{api}/prune", json=body, headers=headers, timeout=60)


def submit_ok(api: str, body: dict[str, Any], key: str | None = None) -> str:
    response = submit(api, body, key)
    assert response.status_code == 202, response.text
    job_id = str(response.json()["job_id"])
    assert response.headers["location"] == f"/jobs/{job_id}"
    return job_id


def get_job(api: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{api}/jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for(
    api: str, job_id: str, statuses: set[str] = TERMINAL, timeout: float = 180.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(api, job_id)
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
        time.sleep(0.1)


def versions(api: str, model_id: str) -> list[int]:
    response = httpx.get(f"{api}/models/{model_id}/versions", timeout=30)
    assert response.status_code == 200, response.text
    return [v["version"] for v in response.json()["data"]]


def predict(api: str, model_id: str, version: int, x: np.ndarray) -> np.ndarray:
    response = httpx.post(
        f"{api}/models/{model_id}/versions/{version}/predict",
        json={"inputs": x.tolist()},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["outputs"], dtype="float32")
