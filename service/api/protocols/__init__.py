"""Wire formats of the serving protocols, as pure conversions between bytes and numpy arrays.

`v2` is the Open Inference Protocol (KServe V2 / Triton) REST format, JSON and binary tensors;
`tfserving` is TensorFlow Serving's REST predict format, row and columnar. Nothing here knows
FastAPI or the registry: the routes decode with these, call the predict core, and encode.
Every malformed request raises `service.errors.InvalidInput` (or `InvalidJSON`).
"""

from __future__ import annotations

from typing import Any

import orjson

from service.errors import InvalidInput, InvalidJSON

# One dimension of a TensorSpec: unknown dims (None) are -1 on every protocol's wire.
UNKNOWN_DIM = -1


def wire_shape(shape: list[int | None]) -> list[int]:
    return [UNKNOWN_DIM if d is None else int(d) for d in shape]


def load_json_object(body: bytes, what: str = "Request body") -> dict[str, Any]:
    """``body`` parsed as a JSON object, or `InvalidJSON` / `InvalidInput` saying why not."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def check_same_batch(named: dict[str, Any]) -> None:
    """Every input of one request needs the same batch size (native predict's wording)."""
    sizes = [a.shape[0] if a.ndim else 0 for a in named.values()]
    if len(set(sizes)) > 1:
        raise InvalidInput(f"inputs: every input needs the same batch size, got {sizes}")
