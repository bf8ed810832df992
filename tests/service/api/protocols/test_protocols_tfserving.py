"""The TF Serving codec on its own: row and columnar decoding, encoding, metadata."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.api.protocols import tfserving
from service.errors import InvalidInput
from service.serving import Prediction, ServingSignature, TensorSpec

ONE = ServingSignature(
    "m", 1, [TensorSpec("x", "float32", [None, 2])], [TensorSpec("y", "float32", [None, 1])]
)
TWO = ServingSignature(
    "m",
    1,
    [TensorSpec("a", "float32", [None, 2]), TensorSpec("b", "int32", [None])],
    [TensorSpec("p", "float32", [None, 2]), TensorSpec("q", "float32", [None])],
)


def _decode(body: object, signature: ServingSignature = ONE) -> tfserving.PredictRequest:
    return tfserving.decode_request(orjson.dumps(body), signature)


def test_row_and_columnar_give_the_same_arrays() -> None:
    rows = _decode({"instances": [[1, 2], [3, 4]]})
    columns = _decode({"inputs": [[1, 2], [3, 4]]})
    named = _decode({"inputs": {"x": [[1, 2], [3, 4]]}})
    assert (rows.format, columns.format) == ("row", "columnar")
    for decoded in (rows, columns, named):
        np.testing.assert_array_equal(decoded.inputs["x"], [[1, 2], [3, 4]])
    multi = _decode({"instances": [{"a": [1, 2], "b": 5}, {"a": [3, 4], "b": 6}]}, TWO)
    assert multi.inputs["b"].tolist() == [5, 6]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [[1, 2]], "inputs": [[1, 2]]}, "exactly one"),
        ({}, "exactly one"),
        ({"signature_name": "classify", "instances": [[1, 2]]}, "not found"),
        ({"instances": [[1, 2]], "extra": 1}, "Unknown keys"),
        ({"instances": []}, "non-empty"),
        ({"instances": [[1, 2], [1]]}, "ragged"),
        ({"instances": [{"x": [1, 2]}, [1, 2]]}, "all objects"),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_requests_say_why(body: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _decode(body)


def test_multi_input_needs_names() -> None:
    with pytest.raises(InvalidInput, match="2 inputs"):
        _decode({"instances": [[1, 2]]}, TWO)
    with pytest.raises(InvalidInput, match="same inputs"):
        _decode({"instances": [{"a": [1, 2], "b": 1}, {"a": [1, 2]}]}, TWO)


def test_encode_mirrors_the_request_format() -> None:
    prediction = Prediction(
        "m", 1, [np.array([[1.0, 2.0]], "float32"), np.array([3.0], "float32")], ["p", "q"]
    )
    rows = orjson.loads(tfserving.encode_response(tfserving.PredictRequest("row", {}), prediction))
    assert rows == {"predictions": [{"p": [1.0, 2.0], "q": 3.0}]}
    columns = orjson.loads(
        tfserving.encode_response(tfserving.PredictRequest("columnar", {}), prediction)
    )
    assert columns == {"outputs": {"p": [[1.0, 2.0]], "q": [3.0]}}


def test_metadata_names_dtypes_and_dims() -> None:
    meta = tfserving.metadata(TWO)
    definition = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert definition["inputs"]["b"]["dtype"] == "DT_INT32"
    assert [d["size"] for d in definition["inputs"]["a"]["tensor_shape"]["dim"]] == ["-1", "2"]
    assert meta["model_spec"] == {"name": "m", "signature_name": "", "version": "1"}
