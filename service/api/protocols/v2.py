"""The Open Inference Protocol (KServe V2) REST wire format: JSON tensors and binary tensors.

A request is a JSON object ``{"id", "parameters", "inputs": [...], "outputs": [...]}``; with
the binary tensor data extension, the JSON is only the first ``Inference-Header-Content-Length``
bytes of the body and each input with ``parameters.binary_data_size`` takes that many raw
little-endian bytes, in input order, from the rest. Numbers in a binary tensor are never parsed
as JSON. Sizes are checked before anything is allocated from them: a declared shape is only
ever compared with data that has arrived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.api.protocols import load_json_object, wire_shape
from service.errors import InvalidInput
from service.serving import Prediction, ServingSignature

HEADER_LENGTH = "inference-header-content-length"
# Little-endian, as the extension specifies, whatever the host's byte order.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_OF_NUMPY = {dtype.newbyteorder("=").name: name for name, dtype in DATATYPES.items()}
# Named by the protocol, but this server serves numeric tensors only.
_REFUSED = {"BYTES": "strings", "BF16": "bfloat16"}
MAX_DIMS = 32


def datatype_of(dtype_name: str) -> str:
    """The V2 datatype of a numpy dtype name (``float32`` -> ``FP32``)."""
    try:
        return _OF_NUMPY[np.dtype(dtype_name).name]
    except (TypeError, KeyError):
        # Keras reports a few dtypes numpy lacks (bfloat16): the core serves them as FP32.
        return "FP32"


def tensor_metadata(signature: ServingSignature) -> dict[str, list[dict[str, Any]]]:
    def describe(specs: Any) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "datatype": datatype_of(s.dtype), "shape": wire_shape(s.shape)}
            for s in specs
        ]

    return {"inputs": describe(signature.inputs), "outputs": describe(signature.outputs)}


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    # None: every output of the model, in its order.
    outputs: list[RequestedOutput] | None
    binary_output: bool
    parameters: dict[str, Any] = field(default_factory=dict)


def _object(value: Any, label: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{label} must be a JSON object, got {type(value).__name__}")
    return value


def _bool_param(parameters: dict[str, Any], key: str, label: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{label}.{key} must be true or false, got {value!r}")
    return value


def _shape(value: Any, label: str) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise InvalidInput(f"{label}.shape must be a list of at most {MAX_DIMS} dimensions")
    for dim in value:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise InvalidInput(
                f"{label}.shape must hold non-negative integers, got {orjson.dumps(value).decode()}"
            )
    return value


def _datatype(value: Any, label: str) -> np.dtype[Any]:
    if not isinstance(value, str):
        raise InvalidInput(f"{label}.datatype must be a string such as 'FP32'")
    if value in _REFUSED:
        raise InvalidInput(
            f"{label}.datatype {value!r} ({_REFUSED[value]}) is not supported: this server "
            f"serves numeric tensors ({', '.join(DATATYPES)})"
        )
    if value not in DATATYPES:
        raise InvalidInput(
            f"{label}.datatype {value!r} is not a V2 datatype; expected one of "
            f"{', '.join(DATATYPES)}"
        )
    return DATATYPES[value]


def _from_json_data(data: Any, shape: list[int], dtype: np.dtype[Any], label: str) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInput(f"{label}.data must be a (flat or nested) list of values")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{label}.data is ragged or malformed: {exc}") from exc
    count = math.prod(shape)
    if array.size != count:
        raise InvalidInput(
            f"{label}: shape {shape} needs {count} values, data holds {array.size}",
            details={"shape": shape, "expected_values": count, "received_values": array.size},
        )
    if count == 0:
        return np.zeros(shape, dtype)
    kind = array.dtype.kind
    wanted = "b" if dtype.kind == "b" else ("iu" if dtype.kind in "iu" else "iuf")
    if kind not in wanted:
        got = {"b": "booleans", "f": "floating-point numbers", "U": "strings"}.get(
            kind, "mixed values"
        )
        raise InvalidInput(f"{label}: datatype {_name(dtype)} does not match data holding {got}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            raise InvalidInput(f"{label}: values out of range for {_name(dtype)}")
    return array.astype(dtype).reshape(shape)


def _from_binary(raw: memoryview, shape: list[int], dtype: np.dtype[Any], label: str) -> np.ndarray:
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{label}: binary_data_size is {len(raw)} bytes, but shape {shape} of "
            f"{_name(dtype)} needs {count * dtype.itemsize}"
        )
    if dtype.kind == "b" and count and np.frombuffer(raw, np.uint8).max() > 1:
        raise InvalidInput(f"{label}: BOOL bytes must be 0 or 1")
    return np.frombuffer(raw, dtype).reshape(shape)


def _name(dtype: np.dtype[Any]) -> str:
    return _OF_NUMPY[dtype.newbyteorder("=").name]


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a request body."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit():
        raise InvalidInput(
            f"Inference-Header-Content-Length must be a byte count, got {header_length[:40]!r}"
        )
    size = int(header_length)
    if size > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {size} but the body has only {len(body)} bytes"
        )
    view = memoryview(body)
    return bytes(view[:size]), view[size:]


def decode_request(header: bytes, binary: memoryview) -> InferRequest:
    """A V2 inference request: its inputs as arrays, keyed by name, and the outputs asked for."""
    request = load_json_object(header, "Inference request")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id must be a string")
    parameters = _object(request.get("parameters"), "parameters")
    binary_output = _bool_param(parameters, "binary_data_output", "parameters")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(raw_inputs):
        label = f"inputs[{i}]"
        tensor = _object(tensor, label)
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"{label}.name must be a string")
        label = f"inputs[{name!r}]"
        if name in inputs:
            raise InvalidInput(f"{label} is given twice")
        shape = _shape(tensor.get("shape"), label)
        dtype = _datatype(tensor.get("datatype"), label)
        params = _object(tensor.get("parameters"), f"{label}.parameters")
        size = params.get("binary_data_size")
        if size is None:
            inputs[name] = _from_json_data(tensor.get("data"), shape, dtype, label)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"{label}.parameters.binary_data_size must be a byte count")
        if "data" in tensor:
            raise InvalidInput(f"{label} has both data and binary_data_size")
        if offset + size > len(binary):
            raise InvalidInput(
                f"{label}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} binary bytes left)"
            )
        inputs[name] = _from_binary(binary[offset : offset + size], shape, dtype, label)
        offset += size
    if offset != len(binary):
        raise InvalidInput(
            f"The body has {len(binary) - offset} bytes after the last binary input "
            "(binary_data_size of the inputs does not add up to the body)"
        )
    return InferRequest(
        request_id, inputs, _requested(request.get("outputs")), binary_output, parameters
    )


def _requested(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("outputs must be a list of {'name': ...} objects")
    requested = []
    for i, output in enumerate(value):
        output = _object(output, f"outputs[{i}]")
        name = output.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"outputs[{i}].name must be a string")
        params = _object(output.get("parameters"), f"outputs[{i}].parameters")
        binary = _bool_param(params, "binary_data", f"outputs[{i}].parameters")
        requested.append(RequestedOutput(name, binary))
    return requested


def check_outputs(request: InferRequest, signature: ServingSignature) -> None:
    """Refuses (before the forward runs) output names the model does not have."""
    if request.outputs is None:
        return
    names = [spec.name for spec in signature.outputs]
    unknown = [o.name for o in request.outputs if o.name not in names]
    if unknown:
        raise InvalidInput(
            f"outputs: unknown output names {unknown}; this model's outputs are {names}",
            details={"expected": names, "unexpected": unknown},
        )


def encode_response(
    request: InferRequest, prediction: Prediction, model_name: str
) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary tensors, the length of its JSON part."""
    by_name = dict(zip(prediction.output_names, prediction.outputs, strict=True))
    wanted = request.outputs or [
        RequestedOutput(name, request.binary_output) for name in prediction.output_names
    ]
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in wanted:
        array = np.ascontiguousarray(by_name[output.name])
        if array.dtype.name not in _OF_NUMPY:
            array = array.astype("float32")
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": _OF_NUMPY[array.dtype.name],
            "shape": list(array.shape),
        }
        if output.binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.ravel()
        described.append(entry)
    response: dict[str, Any] = {
        "model_name": model_name,
        "model_version": str(prediction.version),
        "outputs": described,
    }
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
