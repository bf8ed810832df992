"""End to end over HTTP against a real uvicorn server: registry, downloads, predict, ops."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.api import RunningApi, launch_api, stop_api
from tests.support.s3 import stored_artifacts
from tests.support.uploads import lambda_model_bytes, upload, upload_version

# Runs a second time in CI with the artifacts in S3 (scripts/test).
pytestmark = pytest.mark.artifact_store

MAX_BATCH = 16


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, module_store_env: dict[str, str]
) -> Iterator[RunningApi]:
    server = launch_api(
        {
            **module_store_env,
            "SPECTRAL_MAX_BATCH": str(MAX_BATCH),
            "SPECTRAL_MODEL_CACHE_SIZE": "2",
        },
        tmp_path_factory.mktemp("api"),
    )
    yield server
    stop_api(server)


@pytest.fixture
def client(api: RunningApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def local_model(digits_model_path: Path) -> Any:
    import keras

    return keras.saving.load_model(digits_model_path)


def _db_counts(data_dir: Path) -> tuple[int, int]:
    with sqlite3.connect(data_dir / "registry.db") as conn:
        models = conn.execute("SELECT count(*) FROM models").fetchone()[0]
        versions = conn.execute("SELECT count(*) FROM model_versions").fetchone()[0]
    return models, versions


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return dict(body["error"])


def test_upload_list_versions_aliases_and_download(
    client: httpx.Client, model_bytes: bytes
) -> None:
    created = upload(client, "registry-flow", model_bytes)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["id"], body["version"]) == ("registry-flow", 1)
    assert body["inputs"] == [{"name": "pixels", "shape": [None, 64], "dtype": "float32"}]
    assert body["outputs"][0]["shape"] == [None, 10]
    assert [s["units"] for s in body["spectral_layers"]] == [32, 16]
    assert body["size_bytes"] == len(model_bytes)

    duplicate = upload(client, "registry-flow", model_bytes)
    assert duplicate.status_code == 409
    assert _error(duplicate)["code"] == "model_exists"

    second = upload_version(client, "registry-flow", model_bytes)
    assert second.status_code == 201, second.text
    assert second.json()["version"] == 2

    listing = client.get("/models").json()
    assert "registry-flow" in [m["id"] for m in listing["data"]]
    assert listing["count"] == len(listing["data"])

    model = client.get("/models/registry-flow").json()
    assert model["latest_version"] == 2
    assert [v["version"] for v in model["versions"]] == [1, 2]

    meta = client.get("/models/registry-flow/versions/1").json()
    assert meta["sha256"] == body["sha256"]
    assert meta["parent_version"] is None and meta["lineage"] is None
    assert client.get("/models/registry-flow/versions").json()["count"] == 2

    download = client.get("/models/registry-flow/versions/2/artifact")
    assert download.status_code == 200
    assert download.content == model_bytes

    put = client.put("/models/registry-flow/aliases/production", json={"version": 1})
    assert put.status_code == 200, put.text
    assert client.get("/models/registry-flow").json()["aliases"] == {"production": 1}
    bad_alias = client.put("/models/registry-flow/aliases/production", json={"version": 9})
    assert bad_alias.status_code == 404
    assert _error(bad_alias)["code"] == "version_not_found"
    assert client.delete("/models/registry-flow/aliases/production").status_code == 204
    gone = client.delete("/models/registry-flow/aliases/production")
    assert _error(gone)["code"] == "alias_not_found"

    report = client.get("/models/registry-flow/versions/1/report")
    assert report.status_code == 404
    assert _error(report)["code"] == "report_not_found"
    assert client.get("/models/registry-flow/versions/1/report.png").status_code == 404


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/models/missing", "model_not_found"),
        ("/models/missing/versions/1", "model_not_found"),
        ("/no/such/route", "not_found"),
    ],
)
def test_unknown_things_are_404_in_the_error_shape(
    client: httpx.Client, path: str, code: str
) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert _error(response)["code"] == code


def test_predict_get_and_post_match_the_local_model(
    client: httpx.Client,
    model_bytes: bytes,
    local_model: Any,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    assert upload(client, "predict-flow", model_bytes).status_code == 201
    x = digits_data[0][:7]
    expected = local_model.predict_on_batch(x)

    post = client.post("/models/predict-flow/predict", json={"inputs": x.tolist()})
    assert post.status_code == 200, post.text
    assert (post.json()["model_id"], post.json()["version"]) == ("predict-flow", 1)
    np.testing.assert_allclose(post.json()["outputs"], expected, rtol=1e-5, atol=1e-6)

    get = client.get(
        "/models/predict-flow/versions/1/predict", params={"inputs": json.dumps(x.tolist())}
    )
    assert get.status_code == 200, get.text
    np.testing.assert_allclose(get.json()["outputs"], expected, rtol=1e-5, atol=1e-6)

    # Every batch size up to the limit gives the same rows (padding must not leak).
    for batch in (1, 3, MAX_BATCH):
        out = client.post(
            "/models/predict-flow/predict", json={"inputs": digits_data[0][:batch].tolist()}
        ).json()["outputs"]
        np.testing.assert_allclose(
            out, local_model.predict_on_batch(digits_data[0][:batch]), rtol=1e-5, atol=1e-6
        )


def test_default_predict_serves_production_alias_else_latest(
    client: httpx.Client, model_bytes: bytes, tmp_path: Path
) -> None:
    import keras

    from spectral import Spectral

    other = keras.Sequential(
        [keras.Input((64,)), Spectral(8, activation="relu"), keras.layers.Dense(3)]
    )
    other.save(tmp_path / "other.keras")
    assert upload(client, "alias-flow", model_bytes).status_code == 201
    assert upload_version(client, "alias-flow", (tmp_path / "other.keras").read_bytes()).is_success
    inputs = {"inputs": [[0.5] * 64]}

    latest = client.post("/models/alias-flow/predict", json=inputs).json()
    assert latest["version"] == 2 and len(latest["outputs"][0]) == 3
    client.put("/models/alias-flow/aliases/production", json={"version": 1})
    production = client.get(
        "/models/alias-flow/predict", params={"inputs": json.dumps(inputs["inputs"])}
    ).json()
    assert production["version"] == 1 and len(production["outputs"][0]) == 10


def test_bad_uploads_are_rejected_and_leave_nothing(
    client: httpx.Client, api: RunningApi, model_bytes: bytes, tmp_path: Path
) -> None:
    before_files = stored_artifacts(api)
    before_counts = _db_counts(api.data_dir)
    cases = [
        (lambda_model_bytes(tmp_path), "model.keras", 400, "Lambda"),
        (b"this is not a zip file", "model.keras", 400, "not a zip"),
        (model_bytes[: len(model_bytes) // 2], "model.keras", 400, "archive"),
        (model_bytes, "model.h5", 415, "re-save with model.save('model.keras')"),
        (model_bytes, "MODEL.H5", 415, "legacy HDF5 (.h5) models are not accepted"),
        (model_bytes, "model.bin", 415, "Expected a .keras file, got 'model.bin'"),
    ]
    for data, filename, status, message in cases:
        response = upload(client, "bad-upload", data, filename)
        assert response.status_code == status, response.text
        assert message in _error(response)["message"]
        # Only a legacy HDF5 name is told how to re-save: anything else just is not .keras.
        assert ("HDF5" in _error(response)["message"]) == filename.lower().endswith(".h5")
    assert upload(client, "Bad Name", model_bytes).status_code == 422
    assert client.get("/models/bad-upload").status_code == 404
    assert stored_artifacts(api) == before_files
    assert _db_counts(api.data_dir) == before_counts


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"inputs": [[0.0] * 63] * 2}, 422, "expected shape [-1, 64], got [2, 63]"),
        ('{"inputs": [[NaN' + ", 0.0" * 63 + "]]}", 422, "finite"),
        ('{"inputs": [[Infinity' + ", 0.0" * 63 + "]]}", 422, "finite"),
        ({"inputs": [[0.0] * 64, [0.0] * 10]}, 422, "ragged"),
        ({"inputs": [["x"] * 64]}, 422, "expected numbers"),
        ({"inputs": [[True, False] * 32]}, 422, "expected numbers, got values of type 'bool'"),
        ({"inputs": "pixels"}, 422, "nested list of numbers"),
        ({"data": [[0.0] * 64]}, 422, "inputs"),
        ({"inputs": [[0.0] * 64] * (MAX_BATCH + 1)}, 422, f"exceeds the limit of {MAX_BATCH}"),
        ("{not json", 422, "JSON"),
    ],
)
def test_bad_predict_inputs_are_4xx_with_clear_messages(
    client: httpx.Client, model_bytes: bytes, body: Any, status: int, message: str
) -> None:
    if client.get("/models/input-checks").status_code == 404:
        assert upload(client, "input-checks", model_bytes).status_code == 201
    if isinstance(body, str):
        response = client.post(
            "/models/input-checks/predict",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    else:
        response = client.post("/models/input-checks/predict", json=body)
    assert response.status_code == status, response.text
    assert message in _error(response)["message"]


def test_bad_get_query_is_400(client: httpx.Client, model_bytes: bytes) -> None:
    if client.get("/models/input-checks").status_code == 404:
        assert upload(client, "input-checks", model_bytes).status_code == 201
    response = client.get("/models/input-checks/predict", params={"inputs": "[[1, 2"})
    assert response.status_code == 400
    assert _error(response)["code"] == "invalid_json"
    missing = client.get("/models/input-checks/predict")
    assert missing.status_code == 422


@pytest.mark.parametrize(
    "inputs", ["[" * 3000 + "]" * 3000, "[[" + "9" * 5000 + "]]"], ids=["deep", "long-integer"]
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_hostile_json_is_400_not_500(
    client: httpx.Client, model_bytes: bytes, inputs: str, method: str
) -> None:
    if client.get("/models/input-checks").status_code == 404:
        assert upload(client, "input-checks", model_bytes).status_code == 201
    if method == "GET":
        response = client.get("/models/input-checks/predict", params={"inputs": inputs})
    else:
        response = client.post(
            "/models/input-checks/predict",
            content='{"inputs": ' + inputs + "}",
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400, response.text
    # The server is still answering on the same connection.
    assert client.get("/healthz").status_code == 200


def test_parallel_predicts_while_a_version_is_uploaded(
    client: httpx.Client, api: RunningApi, model_bytes: bytes
) -> None:
    assert upload(client, "busy", model_bytes).status_code == 201
    failures: list[str] = []
    versions: list[int] = []
    serving = threading.Event()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=api, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/models/busy/predict", json={"inputs": [[0.25] * 64] * 4})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    versions.append(r.json()["version"])
                    serving.set()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert serving.wait(60), "no prediction succeeded"
        served_before = len(versions)
        for _ in range(2):
            assert upload_version(client, "busy", model_bytes).status_code == 201
        # An upload can be over in a few tens of ms, less than the GIL gives the server's event
        # loop while the upload thread loads the model: what counts is that the requests in
        # flight across the uploads and the version swap all succeed and serving goes on.
        deadline = time.monotonic() + 30
        while len(versions) < served_before + 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        served_during = len(versions) - served_before
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert served_during > 0
    assert versions[0] == 1 and set(versions) <= {1, 2, 3}
    after = client.post("/models/busy/predict", json={"inputs": [[0.25] * 64]}).json()
    assert after["version"] == 3


def test_ops_endpoints(client: httpx.Client, model_bytes: bytes) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    assert client.get("/docs").status_code == 200
    assert "/models/{model_id}/predict" in client.get("/openapi.json").json()["paths"]
    assert upload(client, "metered", model_bytes).status_code == 201
    for _ in range(3):
        client.post("/models/metered/predict", json={"inputs": [[0.0] * 64]})
    client.post("/models/metered/predict", json={"inputs": [[0.0] * 3]})
    text = client.get("/metrics").text
    assert 'spectral_predict_requests_total{model="metered",outcome="ok",version="1"} 3.0' in text
    assert (
        'spectral_predict_requests_total{model="metered",outcome="invalid_input",version="1"} 1.0'
        in text
    )
    assert 'spectral_predict_duration_seconds_count{model="metered",version="1"} 3.0' in text
    assert 'route="/models/{model_id}/predict"' in text


def test_multi_input_model_takes_inputs_keyed_by_name(client: httpx.Client, tmp_path: Path) -> None:
    import keras

    from spectral import Spectral

    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    out = keras.layers.Dense(2)(Spectral(4, activation="relu")(joined))
    model = keras.Model([a, b], out)
    model.save(tmp_path / "two.keras")
    assert upload(client, "two-inputs", (tmp_path / "two.keras").read_bytes()).status_code == 201
    meta = client.get("/models/two-inputs/versions/1").json()
    assert [i["name"] for i in meta["inputs"]] == ["a", "b"]

    xa = [[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]]
    xb = [[0.5, -0.5], [0.0, 1.0]]
    response = client.post("/models/two-inputs/predict", json={"inputs": {"b": xb, "a": xa}})
    assert response.status_code == 200, response.text
    expected = model.predict_on_batch([np.asarray(xa, "float32"), np.asarray(xb, "float32")])
    np.testing.assert_allclose(response.json()["outputs"], expected, rtol=1e-5, atol=1e-6)
    missing = client.post("/models/two-inputs/predict", json={"inputs": {"a": xa}})
    assert missing.status_code == 422
    assert "missing ['b']" in _error(missing)["message"]


# Past PostgreSQL's INTEGER (2**31) and past SQLite's int64 (2**63): both once gave 500s.
HUGE_NUMBERS = [2**31, 2**63, 10**30]


@pytest.mark.parametrize("number", HUGE_NUMBERS)
def test_huge_numbers_are_refused_not_500(
    client: httpx.Client, model_bytes: bytes, number: int
) -> None:
    """Versions past the schema's bound are 422, in the path and in JSON bodies alike; past
    64 bits a body integer meets the JSON guard first (400): never an overflow in SQL."""
    assert upload(client, "huge-numbers", model_bytes).status_code in (201, 409)
    for path in (
        f"/models/huge-numbers/versions/{number}",
        f"/models/huge-numbers/versions/{number}/artifact",
        f"/models/huge-numbers/versions/{number}/report",
        f"/models/huge-numbers/versions/{number}/predict?inputs=[[0]]",
    ):
        response = client.get(path)
        assert response.status_code == 422, (path, response.text)
        assert _error(response)["code"] == "invalid_request", path
        assert "less than or equal to 2147483647" in _error(response)["message"]
    body_status, body_code = (422, "invalid_request") if number < 2**63 else (400, "invalid_json")
    moved = client.put("/models/huge-numbers/aliases/production", json={"version": number})
    assert (moved.status_code, _error(moved)["code"]) == (body_status, body_code), moved.text
    job = client.post(
        "/prune", json={"model_id": "huge-numbers", "version": number, "percentile": 50}
    )
    assert (job.status_code, _error(job)["code"]) == (body_status, body_code), job.text
    listed = client.get("/jobs", params={"offset": number})
    assert listed.status_code == 422, listed.text


def test_docs_load_their_assets_from_the_server_not_a_cdn(client: httpx.Client) -> None:
    """Without internet access, /docs must still render: every script and stylesheet it
    references is served by this server."""
    import re

    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert any(url.endswith("swagger-ui-bundle.js") for url in assets), assets
    assert any(url.endswith("swagger-ui.css") for url in assets), assets
    for url in assets:
        assert url.startswith("/"), f"/docs loads {url} from another host"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
    assert client.get("/openapi.json").json()["info"]["title"] == "Spectral model service"
    assert client.get("/redoc").status_code == 404
