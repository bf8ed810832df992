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
import pytest

from service.artifacts import store_for
from service.client import Client
from service.settings import Settings
from spectral.layer import Spectral
from tests.support.api import RunningApi
from tests.support.s3 import overwrite_blob
from tests.support.uploads import upload, upload_version


def _forwards(api: str, model: str) -> float:
    text = httpx.get(f"{api}/metrics").text
    found = re.findall(
        rf'spectral_predict_forwards_total{{model="{model}",version="\d+"}} (\S+)', text
    )
    return sum(float(v) for v in found)


def _other_model(tmp_path: Path, input_name: str | None = None) -> tuple[bytes, keras.Model]:
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((64,), name=input_name),
            Spectral(20, activation="tanh", use_bias=True),
            Spectral(10),
        ]
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
    clients = [httpx.Client(base_url=api, timeout=60) for _ in range(32)]
    for c in clients:  # connected before the burst, so that it arrives at once
        assert c.get("/healthz").status_code == 200

    def burst() -> float:
        before = _forwards(api, "batched")
        start = threading.Barrier(len(clients))

        def call(i: int) -> tuple[int, Any, np.ndarray]:
            rows = x[i : i + 1 + i % 4]
            body: Any = {"inputs": rows.tolist()}
            if i % 8 == 5:
                body = {"inputs": rows[:, :63].tolist()}  # a bad request in the burst
            start.wait()
            return i, clients[i].post("/models/batched/predict", json=body), rows

        with ThreadPoolExecutor(len(clients)) as pool:
            results = list(pool.map(call, range(len(clients))))
        for i, response, rows in results:
            if i % 8 == 5:
                assert response.status_code == 422, response.text
                assert "expected shape [-1, 64]" in response.json()["error"]["message"]
                continue
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(
                response.json()["outputs"], local.predict(rows, verbose=0), rtol=1e-5, atol=1e-6
            )
        return _forwards(api, "batched") - before

    try:
        # 28 good requests share fewer forwards; a loaded machine may spread one burst out, so
        # it gets three tries (every try's answers are checked).
        merged = [burst() for _ in range(3)]
        assert all(forwards >= 1 for forwards in merged)
        assert min(merged) < 28, merged
    finally:
        for c in clients:
            c.close()

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


def test_a_version_uploaded_with_its_own_limits_is_batched_by_them(
    start_api: Callable[..., RunningApi],
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    api = start_api({"SPECTRAL_BATCH_MAX_DELAY_MS": "50", "SPECTRAL_BATCH_MAX_ROWS": "64"})
    with Client(api) as client:  # the project's client, as `spectral push --max-batch-size`
        solo = client.push_model(digits_model_path, "solo", max_batch_size=1, max_delay_ms=0)
        shared = client.push_model(digits_model_path, "shared")
    assert (solo.serving, shared.serving) == ({"max_batch_size": 1, "max_delay_ms": 0.0}, {})
    x = digits_data[0][:1].astype("float32").tolist()
    clients = [httpx.Client(base_url=api, timeout=60) for _ in range(16)]

    def burst(model: str) -> float:
        for c in clients:  # connected and the version loaded before the burst
            assert c.post(f"/models/{model}/predict", json={"inputs": x}).status_code == 200
        before = _forwards(api, model)
        start = threading.Barrier(len(clients))

        def call(c: httpx.Client) -> int:
            start.wait()
            return c.post(f"/models/{model}/predict", json={"inputs": x}).status_code

        with ThreadPoolExecutor(len(clients)) as pool:
            assert set(pool.map(call, clients)) == {200}
        return _forwards(api, model) - before

    try:
        assert burst("solo") == 16  # one row per forward: never merged
        # The server's limits (64 rows, 50 ms) merge such a burst; a loaded machine may
        # spread one out, so it gets three tries.
        assert any(burst("shared") < 16 for _ in range(3))
    finally:
        for c in clients:
            c.close()


def test_bad_serving_limits_are_refused_at_upload(
    start_api: Callable[..., RunningApi], model_bytes: bytes
) -> None:
    api = start_api()
    files = {"file": ("m.keras", model_bytes, "application/zip")}
    with httpx.Client(base_url=api, timeout=60) as client:
        for field, value in [
            ("max_batch_size", "0"),
            ("max_delay_ms", "1e9"),
            ("max_batch_size", "x"),
        ]:
            response = client.post("/models", data={"name": "m", field: value}, files=files)
            assert response.status_code == 422, response.text
            assert field in response.text
        assert client.get("/models/m").status_code == 404


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


def test_a_version_that_fails_to_load_says_so_in_every_protocol_while_the_previous_serves(
    start_api: Callable[..., RunningApi],
    model_bytes: bytes,
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = start_api()
    client = httpx.Client(base_url=api, timeout=60)
    local = keras.models.load_model(digits_model_path)
    x = digits_data[0][:3].astype("float32").tolist()
    assert upload(client, "flaky", model_bytes).status_code == 201
    assert client.post("/models/flaky/predict", json={"inputs": x}).json()["version"] == 1
    name = client.get("/v2/models/flaky/versions/1").json()["inputs"][0]["name"]
    # A compatible next version: same input name (the V2 request is checked against it).
    other, _ = _other_model(tmp_path, input_name=name)
    assert upload_version(client, "flaky", other).status_code == 201
    for key, value in api.env.items():
        if key.startswith("SPECTRAL_"):
            monkeypatch.setenv(key, value)
    version_2 = client.get("/models/flaky/versions/2").json()
    overwrite_blob(store_for(Settings(), "artifacts"), version_2["sha256"], b"rotten bytes")

    # The default moved to version 2, which does not load: version 1 answers, exactly.
    response = client.post("/v2/models/flaky/infer", json=_v2_body(name, x))
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "1"
    np.testing.assert_allclose(
        response.json()["outputs"][0]["data"],
        local.predict(np.array(x, "float32"), verbose=0).ravel(),
        rtol=1e-5,
        atol=1e-6,
    )
    # Asked for by number, version 2 fails, and every protocol's status says why.
    assert (
        client.post("/v2/models/flaky/versions/2/infer", json=_v2_body(name, x)).status_code >= 400
    )
    ready = client.get("/v2/models/flaky/versions/2/ready")
    assert (ready.status_code, ready.json()["ready"]) == (400, False)
    assert client.get("/v2/models/flaky/versions/1/ready").status_code == 200
    states = {
        s["version"]: s for s in client.get("/v1/models/flaky").json()["model_version_status"]
    }
    assert states["1"]["state"] == "AVAILABLE"
    assert states["2"]["state"] == "UNKNOWN"
    assert "failed its checksum" in states["2"]["status"]["error_message"]

    # Outputs are named as the model names them, not by Keras's generated tensor names.
    metadata = client.get("/v2/models/flaky/versions/1").json()
    assert [o["name"] for o in metadata["outputs"]] == [local.layers[-1].name]


def _v2_body(name: str, rows: list[list[float]]) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": name,
                "shape": [len(rows), len(rows[0])],
                "datatype": "FP32",
                "data": [v for row in rows for v in row],
            }
        ]
    }
