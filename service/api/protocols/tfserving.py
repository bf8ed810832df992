"""TensorFlow Serving's REST predict format: row (``instances``) and columnar (``inputs``).

Row format lists one instance per batch row: the row itself for a single-input model, or an
object keyed by input name. Columnar format gives each input's whole batch: the value itself
for a single-input model, or an object keyed by input name. The answer mirrors the request:
``predictions`` (per row; per-row objects keyed by output name when the model has several)
or ``outputs`` (the value, or an object keyed by output name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from service.api.protocols import load_json_object, wire_shape
from service.errors import InvalidInput
from service.inference import to_array
from service.serving import Prediction, ServingSignature, TensorSpec

SIGNATURE_NAME = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
_KEYS = {"signature_name", "instances", "inputs"}
DT_NAMES = {
    "float16": "DT_HALF",
    "bfloat16": "DT_BFLOAT16",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
}


@dataclass
class PredictRequest:
    format: Literal["row", "columnar"]
    # Keyed by input name, each with the batch as its first dimension.
    inputs: dict[str, np.ndarray]


def _array(value: Any, spec: TensorSpec, label: str) -> np.ndarray:
    return to_array(value, {"shape": spec.shape}, label)


def check_signature_name(value: Any) -> None:
    if value is not None and value != SIGNATURE_NAME:
        raise InvalidInput(
            f"Serving signature name: {value!r} not found; this model has only {SIGNATURE_NAME!r}"
        )


def decode_request(body: bytes, signature: ServingSignature) -> PredictRequest:
    request = load_json_object(body)
    unknown = sorted(set(request) - _KEYS)
    if unknown:
        raise InvalidInput(
            f"Unknown keys {unknown}: a predict request has 'instances' (row format) or "
            "'inputs' (columnar format), and optionally 'signature_name'"
        )
    check_signature_name(request.get("signature_name"))
    if ("instances" in request) == ("inputs" in request):
        raise InvalidInput(
            "A predict request needs exactly one of 'instances' (row format) or 'inputs' "
            "(columnar format)"
        )
    if "instances" in request:
        return PredictRequest("row", _rows(request["instances"], signature))
    return PredictRequest("columnar", _columns(request["inputs"], signature))


def _rows(instances: Any, signature: ServingSignature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("instances must be a non-empty list, one item per batch row")
    specs = {spec.name: spec for spec in signature.inputs}
    named = [isinstance(item, dict) for item in instances]
    if not any(named):
        if len(specs) != 1:
            raise InvalidInput(
                f"This model has {len(specs)} inputs: each instance must be an object keyed "
                f"by input name {list(specs)}"
            )
        spec = signature.inputs[0]
        return {spec.name: _array(instances, spec, "instances")}
    if not all(named):
        raise InvalidInput("instances must be all objects (keyed by input name) or all values")
    keys = list(instances[0])
    for i, item in enumerate(instances):
        if sorted(item) != sorted(keys):
            raise InvalidInput(
                f"instances[{i}] has keys {sorted(item)}, instances[0] has {sorted(keys)}: "
                "every instance needs the same inputs"
            )
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        spec = specs.get(key, TensorSpec(key, "float32", [None]))
        arrays[key] = _array([item[key] for item in instances], spec, f"instances[*][{key!r}]")
    return arrays


def _columns(inputs: Any, signature: ServingSignature) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict):
        specs = {spec.name: spec for spec in signature.inputs}
        return {
            key: _array(
                value, specs.get(key, TensorSpec(key, "float32", [None])), f"inputs[{key!r}]"
            )
            for key, value in inputs.items()
        }
    if len(signature.inputs) != 1:
        raise InvalidInput(
            f"This model has {len(signature.inputs)} inputs: 'inputs' must be an object keyed "
            f"by input name {[spec.name for spec in signature.inputs]}"
        )
    spec = signature.inputs[0]
    return {spec.name: _array(inputs, spec, "inputs")}


def encode_response(request: PredictRequest, prediction: Prediction) -> bytes:
    outputs = [np.ascontiguousarray(o) for o in prediction.outputs]
    names = prediction.output_names
    body: dict[str, Any]
    if request.format == "columnar":
        if len(outputs) == 1:
            body = {"outputs": outputs[0]}
        else:
            body = {"outputs": dict(zip(names, outputs, strict=True))}
    elif len(outputs) == 1:
        body = {"predictions": outputs[0]}
    else:
        rows = outputs[0].shape[0]
        body = {
            "predictions": [
                {name: out[i] for name, out in zip(names, outputs, strict=True)}
                for i in range(rows)
            ]
        }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _tensor_info(spec: TensorSpec, prefix: str) -> dict[str, Any]:
    return {
        "dtype": DT_NAMES.get(spec.dtype, "DT_FLOAT"),
        # int64 fields are strings in protobuf's JSON, as TF Serving prints them.
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in wire_shape(spec.shape)],
            "unknown_rank": False,
        },
        "name": f"{prefix}{spec.name}:0",
    }


def metadata(signature: ServingSignature) -> dict[str, Any]:
    """``GET /v1/models/{name}/metadata``'s answer: the model spec and its signature_def."""
    definition = {
        "inputs": {s.name: _tensor_info(s, "serving_default_") for s in signature.inputs},
        "outputs": {s.name: _tensor_info(s, "StatefulPartitionedCall_") for s in signature.outputs},
        "method_name": PREDICT_METHOD,
    }
    return {
        "model_spec": {
            "name": signature.model_id,
            "signature_name": "",
            "version": str(signature.version),
        },
        "metadata": {"signature_def": {"signature_def": {SIGNATURE_NAME: definition}}},
    }


def version_status(version: int, ready: bool, message: str = "") -> dict[str, Any]:
    """One entry of ``model_version_status``, in TF Serving's words."""
    return {
        "version": str(version),
        "state": "AVAILABLE" if ready else "UNKNOWN",
        "status": {"error_code": "OK" if ready else "UNKNOWN", "error_message": message},
    }


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
