"""The TF Serving REST front end against a real server, called as TF Serving's REST API doc
shows: a plain JSON POST (httpx, and curl), row and columnar formats, versions and labels."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.service.api.protocols.support import (
    DIGITS,
    MULTI,
    Served,
    assert_close,
    digits_rows,
    expected,
    multi_inputs,
    start_served,
)
from tests.support.api import stop_api


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_bytes: bytes) -> Iterator[Served]:
    server = start_served(tmp_path_factory.mktemp("tfs"), model_bytes)
    yield server
    stop_api(server.api)


def _post(served: Served, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{served.api}/v1/models/{path}", json=body, timeout=60)


@pytest.mark.parametrize(
    ("path", "version"),
    [
        (f"{DIGITS}:predict", 1),  # the default: alias production
        (f"{DIGITS}/versions/2:predict", 2),
        (f"{DIGITS}/versions/1:predict", 1),
        (f"{DIGITS}/labels/canary:predict", 2),
    ],
)
def test_row_and_columnar_match_model_predict(served: Served, path: str, version: int) -> None:
    x = digits_rows(32)
    want = expected(served, DIGITS, version, x)[0]
    rows = _post(served, path, {"signature_name": "serving_default", "instances": x.tolist()})
    assert rows.status_code == 200, rows.text
    assert set(rows.json()) == {"predictions"}
    assert_close(rows.json()["predictions"], want)
    columns = _post(served, path, {"inputs": x.tolist()})
    assert columns.status_code == 200, columns.text
    assert_close(columns.json()["outputs"], want)
    named = _post(served, path, {"inputs": {"pixels": x.tolist()}})
    assert_close(named.json()["outputs"], want)
    by_row = _post(served, path, {"instances": [{"pixels": row} for row in x.tolist()]})
    assert_close(by_row.json()["predictions"], want)


def test_curl_as_in_the_docs(served: Served) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    x = digits_rows(3)
    data = json.dumps({"instances": x.tolist()})
    out = subprocess.run(
        ["curl", "-s", "-d", data, f"{served.api}/v1/models/{DIGITS}:predict"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert_close(json.loads(out)["predictions"], expected(served, DIGITS, 1, x)[0])


def test_multi_input_multi_output(served: Served) -> None:
    a, b = multi_inputs(4)
    want = expected(served, MULTI, 1, a, b)
    meta = httpx.get(f"{served.api}/v1/models/{MULTI}/metadata", timeout=60).json()
    outputs = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
    names = list(outputs)
    columns = _post(served, f"{MULTI}:predict", {"inputs": {"a": a.tolist(), "b": b.tolist()}})
    assert columns.status_code == 200, columns.text
    for name, array in zip(names, want, strict=True):
        assert_close(columns.json()["outputs"][name], array)
    instances = [{"a": ra, "b": rb} for ra, rb in zip(a.tolist(), b.tolist(), strict=True)]
    rows = _post(served, f"{MULTI}:predict", {"instances": instances})
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert len(predictions) == 4
    for name, array in zip(names, want, strict=True):
        assert_close([p[name] for p in predictions], array)


def test_status_and_metadata(served: Served) -> None:
    status = httpx.get(f"{served.api}/v1/models/{DIGITS}", timeout=60).json()
    ok = {"error_code": "OK", "error_message": ""}
    assert status == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": ok},
            {"version": "1", "state": "AVAILABLE", "status": ok},
        ]
    }
    one = httpx.get(f"{served.api}/v1/models/{DIGITS}/labels/canary", timeout=60).json()
    assert [s["version"] for s in one["model_version_status"]] == ["2"]
    meta = httpx.get(f"{served.api}/v1/models/{DIGITS}/versions/2/metadata", timeout=60).json()
    assert meta["model_spec"]["version"] == "2"
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    pixels = signature["inputs"]["pixels"]
    assert pixels["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in pixels["tensor_shape"]["dim"]] == ["-1", "64"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    missing = httpx.get(f"{served.api}/v1/models/{DIGITS}/versions/9", timeout=60)
    assert missing.status_code == 404 and set(missing.json()) == {"error"}


def test_other_verbs_answer_clearly(served: Served) -> None:
    classify = _post(served, f"{DIGITS}:classify", {"examples": []})
    assert classify.status_code == 404 and "':classify'" in classify.json()["error"]
    regress = _post(served, f"{DIGITS}/versions/1:regress", {"examples": []})
    assert regress.status_code == 404
    get = httpx.get(f"{served.api}/v1/models/{DIGITS}:predict", timeout=60)
    assert get.status_code == 405 and get.headers["allow"] == "POST"
    assert set(get.json()) == {"error"}
    status = httpx.get(f"{served.api}/v1/models/{DIGITS}:status", timeout=60)
    assert status.status_code == 404 and set(status.json()) == {"error"}


HOSTILE: dict[str, object] = {
    "both formats": {"instances": [[0.0] * 64], "inputs": [[0.0] * 64]},
    "neither": {"signature_name": "serving_default"},
    "unknown signature": {"signature_name": "other", "instances": [[0.0] * 64]},
    "unknown key": {"instance": [[0.0] * 64]},
    "empty instances": {"instances": []},
    "ragged": {"instances": [[0.0] * 64, [0.0] * 3]},
    "wrong width": {"instances": [[0.0] * 63]},
    "strings": {"instances": [["a"] * 64]},
    "b64": {"instances": [{"b64": "AAAA"}]},
    "mixed rows": {"instances": [{"pixels": [0.0] * 64}, [0.0] * 64]},
    "wrong name": {"inputs": {"image": [[0.0] * 64]}},
    "not an object": [[0.0] * 64],
    "null": None,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_requests_are_4xx_in_the_protocol_shape(served: Served, case: str) -> None:
    response = _post(served, f"{DIGITS}:predict", HOSTILE[case])
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)


def test_multi_input_hostile(served: Served) -> None:
    a, b = multi_inputs(3)
    uneven = _post(served, f"{MULTI}:predict", {"inputs": {"a": a.tolist(), "b": b[:2].tolist()}})
    assert uneven.status_code == 400 and "same batch size" in uneven.json()["error"]
    unnamed = _post(served, f"{MULTI}:predict", {"instances": a.tolist()})
    assert unnamed.status_code == 400 and "2 inputs" in unnamed.json()["error"]
    bad = httpx.post(f"{served.api}/v1/models/{DIGITS}:predict", content=b"{[", timeout=60)
    assert bad.status_code == 400 and set(bad.json()) == {"error"}
