"""The predict path: input validation, and a bounded, thread-safe LRU cache of loaded models.

Each model version is loaded once, warmed with a dummy forward pass, and then served through
Keras's compiled predict function (`predict_on_batch`). Batches are zero-padded up to the next
power of two, so a version compiles at most ``log2(max_batch)`` graphs however batch sizes vary.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from service.errors import InvalidInput, SpectralError
from service.metrics import ServiceMetrics
from service.versions import VersionRecord

logger = logging.getLogger(__name__)

# Integers and floats; booleans are refused too, since true/false in a request is a client bug.
_NUMERIC_KINDS = "iuf"


def _shape_text(shape: list[int | None] | tuple[int, ...]) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


def to_array(value: Any, spec: dict[str, Any], label: str) -> np.ndarray:
    """A JSON value (nested lists of numbers) as a numeric array, or `InvalidInput`."""
    expected = spec["shape"]
    if isinstance(value, str | bytes) or value is None:
        raise InvalidInput(
            f"{label}: expected a nested list of numbers, got {type(value).__name__}"
        )
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"{label}: ragged or malformed array (rows of unequal length); "
            f"expected shape {_shape_text(expected)}"
        ) from exc
    if array.dtype == object:
        raise InvalidInput(
            f"{label}: ragged or mixed-type array; expected shape {_shape_text(expected)} "
            "of numbers"
        )
    return array


def check_array(array: np.ndarray, spec: dict[str, Any], label: str, max_batch: int) -> np.ndarray:
    """Checks an input array against its spec (kind, shape, batch size, finiteness) and
    returns it in the input's dtype; every protocol's front end goes through here."""
    expected = spec["shape"]
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise InvalidInput(f"{label}: expected numbers, got values of type {array.dtype.name!r}")
    if array.ndim != len(expected) or any(
        want is not None and want != got for want, got in zip(expected, array.shape, strict=False)
    ):
        raise InvalidInput(
            f"{label}: expected shape {_shape_text(expected)}, got {_shape_text(array.shape)}",
            details={"expected": expected, "received": list(array.shape)},
        )
    batch = array.shape[0] if array.ndim else 0
    if batch < 1:
        raise InvalidInput(f"{label}: the batch is empty")
    if batch > max_batch:
        raise InvalidInput(
            f"{label}: batch of {batch} exceeds the limit of {max_batch} rows",
            details={"max_batch": max_batch, "received": batch},
        )
    dtype = np.dtype(spec.get("dtype") or "float32")
    if dtype.kind not in _NUMERIC_KINDS:
        dtype = np.dtype("float32")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{label}: inputs must be finite numbers (no NaN or Infinity)")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(dtype)
    if converted.dtype.kind == "f" and not np.isfinite(converted).all():
        raise InvalidInput(f"{label}: inputs overflow {dtype.name}")
    return converted


def _to_array(value: Any, spec: dict[str, Any], label: str, max_batch: int) -> np.ndarray:
    return check_array(to_array(value, spec, label), spec, label, max_batch)


def validate_inputs(
    inputs: Any, input_specs: list[dict[str, Any]], max_batch: int
) -> list[np.ndarray]:
    """Checks a predict request's ``inputs`` against a version's input specs.

    Returns:
        One array per model input, in the model's input order, in the input's dtype.

    Raises:
        InvalidInput: with a message that says what was expected and what was received.
    """
    if inputs is None:
        raise InvalidInput("Request needs 'inputs'")
    if len(input_specs) == 1 and not isinstance(inputs, dict):
        return [_to_array(inputs, input_specs[0], "inputs", max_batch)]
    names = [spec["name"] for spec in input_specs]
    if not isinstance(inputs, dict):
        raise InvalidInput(
            f"This model has {len(names)} inputs: send an object keyed by input name {names}"
        )
    missing = [name for name in names if name not in inputs]
    extra = sorted(set(inputs) - set(names))
    if missing or extra:
        raise InvalidInput(
            f"inputs: expected keys {names}, missing {missing}, unexpected {extra}",
            details={"expected": names, "missing": missing, "unexpected": extra},
        )
    arrays = [
        _to_array(inputs[spec["name"]], spec, f"inputs[{spec['name']!r}]", max_batch)
        for spec in input_specs
    ]
    if len({a.shape[0] for a in arrays}) > 1:
        raise InvalidInput(
            f"inputs: every input needs the same batch size, got {[a.shape[0] for a in arrays]}"
        )
    return arrays


def _bucket(batch: int) -> int:
    return 1 << max(0, math.ceil(math.log2(batch)))


class LoadedModel:
    """A model version ready to serve: loaded, warmed, with its compiled predict function."""

    def __init__(self, record: VersionRecord, model: Any) -> None:
        self.record = record
        self.model = model
        self.input_specs: list[dict[str, Any]] = record.metadata["inputs"]
        self.output_names: list[str] = list(getattr(model, "output_names", []) or [])
        self._trace_lock = threading.Lock()
        self._warm_buckets: set[int] = set()
        self.predict_arrays([np.zeros([1, *spec_dims(spec)]) for spec in self.input_specs])

    def predict_arrays(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        batch = arrays[0].shape[0]
        size = _bucket(batch)
        padded = [
            np.concatenate([a, np.zeros((size - batch, *a.shape[1:]), a.dtype)])
            if size > batch
            else a
            for a in arrays
        ]
        x = padded[0] if len(padded) == 1 else padded
        if size in self._warm_buckets:
            outputs = self.model.predict_on_batch(x)
        else:
            # Tracing a new graph is not safe to do from several threads at once.
            with self._trace_lock:
                outputs = self.model.predict_on_batch(x)
                self._warm_buckets.add(size)
        if isinstance(outputs, dict):
            outputs = [outputs[name] for name in self.output_names]
        if not isinstance(outputs, list | tuple):
            outputs = [outputs]
        return [np.asarray(o)[:batch] for o in outputs]

    def predict(self, inputs: Any, max_batch: int) -> Any:
        """Validated JSON inputs -> JSON-ready outputs (a list, or a dict per output name)."""
        arrays = validate_inputs(inputs, self.input_specs, max_batch)
        outputs = self.predict_arrays(arrays)
        if len(outputs) == 1:
            return outputs[0].tolist()
        names = self.output_names or [f"output_{i}" for i in range(len(outputs))]
        return {name: out.tolist() for name, out in zip(names, outputs, strict=False)}


def spec_dims(spec: dict[str, Any]) -> list[int]:
    """The non-batch dimensions of an input spec (unknown ones taken as 1 for warming)."""
    return [1 if d is None else int(d) for d in spec["shape"][1:]]


class ModelCache:
    """A bounded LRU of `LoadedModel`, keyed by (model_id, version, sha256); thread-safe.

    Args:
        loader: Loads the Keras model of a version (e.g. `Registry.load_keras_model`).
        capacity: How many versions stay loaded.
    """

    def __init__(self, loader: Callable[[VersionRecord], Any], capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1. Received: capacity={capacity}")
        self._loader = loader
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, int, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int, str], threading.Lock] = {}
        self.loads = 0

    def get(self, record: VersionRecord) -> LoadedModel:
        key = (record.model_id, record.version, record.sha256)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            key_lock = self._loading.setdefault(key, threading.Lock())
        # One thread loads a given version; others asking for it wait instead of loading twice.
        with key_lock:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    return entry
            entry = LoadedModel(record, self._loader(record))
            with self._lock:
                self.loads += 1
                self._entries[key] = entry
                while len(self._entries) > self.capacity:
                    evicted, _ = self._entries.popitem(last=False)
                    logger.info("model cache: evicted %s v%d", evicted[0], evicted[1])
                self._loading.pop(key, None)
        logger.info("model cache: loaded %s v%d", record.model_id, record.version)
        return entry

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class Predictor:
    """Serves predictions of registry versions through the cache, recording metrics.

    Args:
        cache: The loaded-model cache.
        max_batch: Largest batch a request may send.
        metrics: Where counts and latencies per model and version go.
    """

    def __init__(self, cache: ModelCache, max_batch: int, metrics: ServiceMetrics) -> None:
        self.cache = cache
        self.max_batch = max_batch
        self.metrics = metrics

    def predict(self, record: VersionRecord, inputs: Any) -> Any:
        labels = (record.model_id, str(record.version))
        start = time.perf_counter()
        try:
            outputs = self.cache.get(record).predict(inputs, self.max_batch)
        except SpectralError as exc:
            self.metrics.predictions.labels(*labels, exc.code).inc()
            raise
        self.metrics.predict_latency.labels(*labels).observe(time.perf_counter() - start)
        self.metrics.predictions.labels(*labels, "ok").inc()
        return outputs
