"""The predict core behind a real uvicorn server: batching merges and splits exactly, a bad
request fails alone, a large request runs alone, and versions swap under load without errors."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import keras
import numpy as np

from spectral.layer import Spectral
from tests.support.api import RunningApi
from tests.support.uploads import upload, upload_version


def _forwards(api: str, model: str) -> float:
    text = httpx.get(f"{api}/metrics").text
    found = re.findall(
        rf'spectral_predict_forwards_total{{model="{model}",version="\d+"}} (\S+)', text
    )
    return sum(float(v) for v in found)


def _other_model(tmp_path: Path) -> tuple[bytes, keras.Model]:
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [keras.Input((64,)), Spectral(20, activation="tanh", use_bias=True), Spectral(10)]
    )
    path = tmp_path / "other.keras"
    model.save(path)
    return path.read_bytes(), model


def test_concurrent_requests_are_batched_split_exactly_and_fail_alone(
    start_api: Callable[..., RunningApi],
    model_bytes: bytes,
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    api = start_api({"SPECTRAL_BATCH_MAX_DELAY_MS": "20", "SPECTRAL_BATCH_MAX_ROWS": "64"})
    client = httpx.Client(base_url=api, timeout=60)
    assert upload(client, "batched", model_bytes).status_code == 201
    local = keras.models.load_model(digits_model_path)
    x = digits_data[0].astype("float32")
    client.post("/models/batched/predict", json={"inputs": x[:1].tolist()})  # loads it
    before = _forwards(api, "batched")

    def call(i: int) -> tuple[int, Any, np.ndarray]:
        rows = x[i : i + 1 + i % 4]
        body: Any = {"inputs": rows.tolist()}
        if i % 8 == 5:
            body = {"inputs": rows[:, :63].tolist()}  # a bad request in the burst
        with httpx.Client(base_url=api, timeout=60) as c:
            response = c.post("/models/batched/predict", json=body)
        return i, response, rows

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(32)))
    for i, response, rows in results:
        if i % 8 == 5:
            assert response.status_code == 422, response.text
            assert "expected shape [-1, 64]" in response.json()["error"]["message"]
            continue
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(
            response.json()["outputs"], local.predict(rows, verbose=0), rtol=1e-5, atol=1e-6
        )
    forwards = _forwards(api, "batched") - before
    assert 1 <= forwards < 28  # 28 good requests shared fewer forwards

    # Past the row limit: alone, and still right.
    big = x[:200]
    response = client.post("/models/batched/predict", json={"inputs": big.tolist()})
    assert response.status_code == 200
    np.testing.assert_allclose(
        response.json()["outputs"], local.predict(big, verbose=0), rtol=1e-5, atol=1e-6
    )
    assert (
        'spectral_predict_batch_rows_bucket{le="256.0",model="batched"'
        in httpx.get(f"{api}/metrics").text
    )


def test_versions_swap_under_load_without_errors(
    start_api: Callable[..., RunningApi],
    model_bytes: bytes,
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    api = start_api()
    client = httpx.Client(base_url=api, timeout=60)
    assert upload(client, "swap", model_bytes).status_code == 201
    other_bytes, other = _other_model(tmp_path)
    models = {1: keras.models.load_model(digits_model_path), 2: other, 3: other}
    x = digits_data[0][:3].astype("float32")
    expected = {v: m.predict(x, verbose=0) for v, m in models.items()}
    seen: list[tuple[int, int]] = []  # (version, status)
    problems: list[str] = []
    stop = threading.Event()
    serving = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=api, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/models/swap/predict", json={"inputs": x.tolist()})
                if r.status_code != 200:
                    problems.append(r.text)
                    continue
                version = r.json()["version"]
                seen.append((version, r.status_code))
                serving.set()
                if not np.allclose(r.json()["outputs"], expected[version], rtol=1e-5, atol=1e-6):
                    problems.append(f"v{version} answered another version's outputs")

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        assert serving.wait(60)
        moves: list[Callable[[], httpx.Response]] = [
            lambda: upload_version(client, "swap", other_bytes),
            lambda: client.put("/models/swap/aliases/production", json={"version": 1}),
            lambda: upload_version(client, "swap", other_bytes),
            lambda: client.put("/models/swap/aliases/production", json={"version": 3}),
        ]
        for move in moves:
            assert move().status_code in (200, 201)
            time.sleep(0.3)  # each version serves a while under load
        final = client.post("/models/swap/predict", json={"inputs": x.tolist()}).json()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert problems == []
    assert final["version"] == 3
    assert {v for v, _ in seen} <= {1, 2, 3} and len({v for v, _ in seen}) == 3
