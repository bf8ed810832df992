"""The V2 codec on its own: datatypes, JSON and binary tensors, sizes, and encoding."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.api.protocols import v2
from service.errors import InvalidInput
from service.serving import Prediction


def _decode(header: dict[str, object], binary: bytes = b"") -> v2.InferRequest:
    return v2.decode_request(orjson.dumps(header), memoryview(binary))


@pytest.mark.parametrize("datatype", sorted(v2.DATATYPES))
def test_every_datatype_round_trips_in_binary(datatype: str) -> None:
    dtype = v2.DATATYPES[datatype]
    array = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    tensor = {"name": "x", "shape": [2, 3], "datatype": datatype}
    decoded = _decode(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": array.nbytes}}]},
        array.tobytes(),
    )
    np.testing.assert_array_equal(decoded.inputs["x"], array)
    assert decoded.inputs["x"].dtype == dtype


def test_binary_is_little_endian_whatever_the_host() -> None:
    raw = np.array([1.5, -2.0], "<f4").tobytes()
    tensor = {"name": "x", "shape": [2], "datatype": "FP32"}
    decoded = _decode({"inputs": [{**tensor, "parameters": {"binary_data_size": 8}}]}, raw)
    assert decoded.inputs["x"].tolist() == [1.5, -2.0]


def test_json_data_flat_or_nested_and_type_checked() -> None:
    flat = _decode(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [1, 2, 3, 4]}]}
    )
    nested = _decode(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}]}
    )
    np.testing.assert_array_equal(flat.inputs["x"], nested.inputs["x"])
    with pytest.raises(InvalidInput, match="floating-point"):
        _decode({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1.5]}]})
    with pytest.raises(InvalidInput, match="out of range"):
        _decode({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]})
    with pytest.raises(InvalidInput, match="booleans"):
        _decode({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [True]}]})


@pytest.mark.parametrize(
    ("header", "binary", "message"),
    [
        (
            {"inputs": [{"name": "x", "shape": [2**62, 2**62], "datatype": "FP32", "data": [1]}]},
            b"",
            "needs",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, -3], "datatype": "FP32", "data": [1]}]},
            b"",
            "non-negative",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            b"",
            "not supported",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"1234",
            "needs 8",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"12",
            "past the end",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"123456",
            "after the last",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "BOOL",
                        "parameters": {"binary_data_size": 1},
                    }
                ]
            },
            b"\x07",
            "0 or 1",
        ),
        ({"inputs": []}, b"", "non-empty"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2},
            b"",
            "twice",
        ),
        (
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                "parameters": {"binary_data_output": "yes"},
            },
            b"",
            "true or false",
        ),
    ],
)
def test_malformed_requests_say_why(header: dict[str, object], binary: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _decode(header, binary)


def test_split_body_checks_the_header_length() -> None:
    assert v2.split_body(b"{}abc", "2")[0] == b"{}"
    assert bytes(v2.split_body(b"{}abc", "2")[1]) == b"abc"
    for bad in ("-1", "1e3", "x", "6"):
        with pytest.raises(InvalidInput):
            v2.split_body(b"{}abc", bad)


def test_encode_json_and_binary_outputs() -> None:
    outputs = [np.array([[1.0, 2.0]], "float32"), np.array([[3]], "int64")]
    prediction = Prediction("m", 3, outputs, ["p", "n"])
    request = _decode(
        {
            "id": "abc",
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [{"name": "n"}, {"name": "p", "parameters": {"binary_data": True}}],
        }
    )
    body, length = v2.encode_response(request, prediction, "m")
    assert length is not None
    header = orjson.loads(body[:length])
    assert header["id"] == "abc" and header["model_version"] == "3"
    assert header["outputs"][0] == {"name": "n", "datatype": "INT64", "shape": [1, 1], "data": [3]}
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(body[length:], "<f4").tolist() == [1.0, 2.0]
