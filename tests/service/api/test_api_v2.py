"""The Open Inference Protocol V2 front end against a real server, through tritonclient.http
used as its documentation shows, and through raw HTTP for the hostile cases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

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
    server = start_served(tmp_path_factory.mktemp("v2"), model_bytes)
    yield server
    stop_api(server.api)


@pytest.fixture(scope="module")
def triton(served: Served) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=urlsplit(served.api).netloc)
    yield client
    client.close()


def _infer(
    triton: httpclient.InferenceServerClient,
    model: str,
    x: np.ndarray,
    *,
    binary: bool,
    version: str = "",
) -> np.ndarray:
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    # Output names are the model's own (its output layers'), so each version has its own: ask
    # the version that will answer, as a client pinning a version does.
    meta = triton.get_model_metadata(model, model_version=version)
    out_name = meta["outputs"][0]["name"]
    out = httpclient.InferRequestedOutput(out_name, binary_data=binary)
    result = triton.infer(model, [inp], model_version=version, outputs=[out])
    array = result.as_numpy(out_name)
    assert array is not None
    return array


def test_server_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "spectral" and "binary_tensor_data" in meta["extensions"]
    model = triton.get_model_metadata(DIGITS)
    assert model["versions"] == ["1", "2"] and model["platform"] == "keras"
    assert model["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert model["outputs"][0]["shape"] == [-1, 10]
    assert triton.get_model_metadata(DIGITS, model_version="2")["name"] == DIGITS
    assert triton.is_model_ready(DIGITS) and triton.is_model_ready(DIGITS, "2")
    assert not triton.is_model_ready(DIGITS, "3")
    assert not triton.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_matches_model_predict(
    served: Served, triton: httpclient.InferenceServerClient, binary: bool
) -> None:
    x = digits_rows(256)
    # Pinned versions, then the default: alias production (version 1), not the latest (2).
    for version in (1, 2):
        got = _infer(triton, DIGITS, x, binary=binary, version=str(version))
        assert_close(got, expected(served, DIGITS, version, x)[0])
    assert_close(_infer(triton, DIGITS, x, binary=binary), expected(served, DIGITS, 1, x)[0])
    assert not np.allclose(expected(served, DIGITS, 1, x)[0], expected(served, DIGITS, 2, x)[0])


def test_default_outputs_are_binary_and_multi_io(
    served: Served, triton: httpclient.InferenceServerClient
) -> None:
    a, b = multi_inputs(5)
    inputs = []
    for name, array in (("a", a), ("b", b)):
        tensor = httpclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=name == "a")
        inputs.append(tensor)
    # No outputs named: tritonclient asks for every output as binary (binary_data_output).
    result = triton.infer(MULTI, inputs)
    names = [o["name"] for o in triton.get_model_metadata(MULTI)["outputs"]]
    want = expected(served, MULTI, 1, a, b)
    for name, array in zip(names, want, strict=True):
        assert_close(result.as_numpy(name), array)
    # A subset, one output as JSON.
    subset = triton.infer(MULTI, inputs, outputs=[httpclient.InferRequestedOutput(names[1])])
    assert subset.get_response()["outputs"][0]["name"] == names[1]
    assert subset.as_numpy(names[0]) is None
    assert_close(subset.as_numpy(names[1]), want[1])


def test_json_request_echoes_id_and_accepts_nested_data(served: Served) -> None:
    x = digits_rows(2)
    body = {
        "id": "req-7",
        "inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": x.tolist()}],
    }
    response = httpx.post(
        f"{served.api}/v2/models/{DIGITS}/versions/2/infer", json=body, timeout=60
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("req-7", DIGITS, "2")
    out = answer["outputs"][0]
    assert out["shape"] == [2, 10] and out["datatype"] == "FP32"
    assert_close(np.reshape(out["data"], out["shape"]), expected(served, DIGITS, 2, x)[0])


def _tensor(**overrides: object) -> dict[str, object]:
    return {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64, **overrides}


def _binary(header: dict[str, object], payload: bytes, length: str | None = None) -> tuple:
    head = orjson.dumps(header)
    return head + payload, {"Inference-Header-Content-Length": length or str(len(head))}


_ROW = np.zeros(64, "<f4").tobytes()
_SIZED = {"name": "pixels", "shape": [1, 64], "datatype": "FP32"}
HOSTILE: dict[str, tuple[bytes, dict[str, str]]] = {
    "wrong datatype for data": (orjson.dumps({"inputs": [_tensor(datatype="INT32")]}), {}),
    "strings in data": (orjson.dumps({"inputs": [_tensor(data=["a"] * 64)]}), {}),
    "shape/data mismatch": (orjson.dumps({"inputs": [_tensor(shape=[1, 63])]}), {}),
    "huge shape, little data": (orjson.dumps({"inputs": [_tensor(shape=[2**40, 2**20])]}), {}),
    "negative dim": (orjson.dumps({"inputs": [_tensor(shape=[-1, 64])]}), {}),
    "BYTES": (orjson.dumps({"inputs": [_tensor(datatype="BYTES")]}), {}),
    "unknown datatype": (orjson.dumps({"inputs": [_tensor(datatype="FP8")]}), {}),
    "BOOL into a float model": (
        orjson.dumps({"inputs": [_tensor(datatype="BOOL", data=[True] * 64)]}),
        {},
    ),
    "wrong input name": (orjson.dumps({"inputs": [_tensor(name="image")]}), {}),
    "unknown output": (
        orjson.dumps({"inputs": [_tensor()], "outputs": [{"name": "nope"}]}),
        {},
    ),
    "not an object": (b"[1, 2, 3]", {}),
    "compressed body": (orjson.dumps({"inputs": [_tensor()]}), {"Content-Encoding": "gzip"}),
    "bad json": (b'{"inputs": [', {}),
    "deep json": (b"[" * 5000 + b"]" * 5000, {}),
    "no inputs": (b"{}", {}),
    "binary size lies": _binary(
        {"inputs": [{**_SIZED, "parameters": {"binary_data_size": 128}}]}, _ROW
    ),
    "binary truncated": _binary(
        {"inputs": [{**_SIZED, "parameters": {"binary_data_size": 256}}]}, _ROW[:100]
    ),
    "binary extra bytes": _binary(
        {"inputs": [{**_SIZED, "parameters": {"binary_data_size": 256}}]}, _ROW + b"xx"
    ),
    "header length past the body": _binary(
        {"inputs": [{**_SIZED, "parameters": {"binary_data_size": 256}}]}, _ROW, "99999"
    ),
    "header length not a number": _binary({"inputs": [_tensor()]}, b"", "12abc"),
    "binary and data both": _binary(
        {"inputs": [{**_tensor(), "parameters": {"binary_data_size": 256}}]}, _ROW
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_requests_are_4xx_in_the_protocol_shape(served: Served, case: str) -> None:
    body, headers = HOSTILE[case]
    response = httpx.post(
        f"{served.api}/v2/models/{DIGITS}/infer", content=body, headers=headers, timeout=30
    )
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    error = response.json()
    assert set(error) == {"error"} and isinstance(error["error"], str), error
    assert error["error"]


def test_errors_keep_the_native_wording_and_statuses(served: Served) -> None:
    missing = httpx.post(
        f"{served.api}/v2/models/nope/infer", json={"inputs": [_tensor()]}, timeout=60
    )
    assert (missing.status_code, missing.json()) == (404, {"error": "No model named 'nope'"})
    shape = httpx.post(
        f"{served.api}/v2/models/{DIGITS}/infer",
        json={"inputs": [_tensor(shape=[1, 32], data=[0.0] * 32)]},
    )
    assert shape.status_code == 400
    assert shape.json()["error"] == "inputs['pixels']: expected shape [-1, 64], got [1, 32]"
    alias = httpx.get(f"{served.api}/v2/models/{DIGITS}/versions/production", timeout=60)
    assert alias.status_code == 400 and "version" in alias.json()["error"]
    unrouted = httpx.get(f"{served.api}/v2/nothing-here", timeout=60)
    assert unrouted.status_code == 404 and set(unrouted.json()) == {"error"}
    # The native API keeps its own shape.
    native = httpx.get(f"{served.api}/models/nope", timeout=60)
    assert native.json()["error"]["code"] == "model_not_found"


def test_openapi_documents_the_v2_routes(served: Served) -> None:
    spec = httpx.get(f"{served.api}/openapi.json", timeout=60).json()
    infer = spec["paths"]["/v2/models/{model_id}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert "422" not in infer["responses"]
    error = infer["responses"]["400"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ProtocolErrorBody"}
    assert "V2InferenceRequest" in spec["components"]["schemas"]


def test_scoped_tokens_see_only_their_models(tmp_path: Path, model_bytes: bytes) -> None:
    from service.tokens import new_token_entry

    token, entry = new_token_entry("reader", "read", ["mine-*"])
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text(entry)
    env = {
        "SPECTRAL_API_TOKEN": "admin",
        "SPECTRAL_TOKENS_FILE": str(tokens_file),
        "SPECTRAL_PROTECT_READS": "true",
    }
    from tests.support.api import launch_api
    from tests.support.uploads import upload

    api = launch_api(env, tmp_path)
    try:
        with httpx.Client(
            base_url=api, headers={"Authorization": "Bearer admin"}, timeout=120
        ) as admin:
            for name in ("mine-a", "secret"):
                assert upload(admin, name, model_bytes).status_code == 201
        scoped = {"Authorization": f"Bearer {token}"}
        body = orjson.dumps({"inputs": [_tensor()]})
        ok = httpx.post(f"{api}/v2/models/mine-a/infer", content=body, headers=scoped, timeout=60)
        assert ok.status_code == 200, ok.text
        for path in ("/v2/models/{}", "/v2/models/{}/ready", "/v1/models/{}/metadata"):
            hidden = httpx.get(api + path.format("secret"), headers=scoped, timeout=60)
            missing = httpx.get(api + path.format("absent"), headers=scoped, timeout=60)
            assert hidden.status_code == 404
            assert hidden.content == missing.content.replace(b"absent", b"secret")
        hidden = httpx.post(
            f"{api}/v2/models/secret/infer", content=body, headers=scoped, timeout=60
        )
        assert hidden.json() == {"error": "No model named 'secret'"}
        anonymous = httpx.post(f"{api}/v2/models/mine-a/infer", content=body, timeout=60)
        assert anonymous.status_code == 401
        assert set(anonymous.json()) == {"error"} and anonymous.headers["www-authenticate"]
        assert (
            httpx.get(f"{api}/models/absent", timeout=60).json()["error"]["code"] == "unauthorized"
        )
    finally:
        stop_api(api)
