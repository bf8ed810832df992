"""Predict input validation and the model cache (LRU bound, one load per version, threads)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import InvalidInput
from service.inference import ModelCache, validate_inputs
from service.model_loading import inspect_artifact, load_model_file
from service.versions import VersionRecord

SPEC = [{"name": "pixels", "shape": [None, 64], "dtype": "float32"}]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([[0.0] * 63] * 2, r"expected shape \[-1, 64\], got \[2, 63\]"),
        ([0.0] * 64, r"expected shape \[-1, 64\], got \[64\]"),
        ([[0.0] * 64, [0.0] * 63], "ragged"),
        ([["a"] * 64], "expected numbers"),
        ("hello", "expected a nested list of numbers"),
        ([[float("nan")] * 64], "finite"),
        ([[float("inf")] * 64], "finite"),
        ([[1e39] * 64], "overflow"),
        ([[0.0] * 64] * 5, "batch of 5 exceeds the limit of 4"),
        ([], "expected shape"),
        (None, "needs 'inputs'"),
    ],
)
def test_bad_inputs_are_rejected_with_clear_messages(inputs: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_inputs(inputs, SPEC, max_batch=4)


def test_good_inputs_are_converted_to_the_input_dtype() -> None:
    (array,) = validate_inputs([[1] * 64, [2] * 64], SPEC, max_batch=4)
    assert array.dtype == np.float32
    assert array.shape == (2, 64)


def test_multi_input_models_take_an_object_keyed_by_name() -> None:
    specs = [
        {"name": "a", "shape": [None, 3], "dtype": "float32"},
        {"name": "b", "shape": [None, 2], "dtype": "float32"},
    ]
    a, b = validate_inputs({"b": [[1, 2]], "a": [[1, 2, 3]]}, specs, max_batch=8)
    assert (a.shape, b.shape) == ((1, 3), (1, 2))
    with pytest.raises(InvalidInput, match=r"missing \['b'\]"):
        validate_inputs({"a": [[1, 2, 3]]}, specs, max_batch=8)
    with pytest.raises(InvalidInput, match="object keyed by input name"):
        validate_inputs([[1, 2, 3]], specs, max_batch=8)
    with pytest.raises(InvalidInput, match="same batch size"):
        validate_inputs({"a": [[1, 2, 3]], "b": [[1, 2], [3, 4]]}, specs, max_batch=8)


def _record(path: Path, version: int) -> VersionRecord:
    return VersionRecord(
        model_id="digits",
        version=version,
        sha256=f"{version:064d}",
        size_bytes=path.stat().st_size,
        created_at=datetime.now(UTC),
        metadata=inspect_artifact(path.read_bytes()),
    )


def test_cache_loads_each_version_once_and_evicts_lru(
    digits_model_path: Path, digits_data: tuple[np.ndarray, np.ndarray]
) -> None:
    loads: list[int] = []

    def loader(record: VersionRecord) -> Any:
        loads.append(record.version)
        return load_model_file(digits_model_path)

    cache = ModelCache(loader, capacity=2)
    records = [_record(digits_model_path, v) for v in (1, 2, 3)]
    x = digits_data[0][:5]
    expected = load_model_file(digits_model_path).predict_on_batch(x)

    errors: list[BaseException] = []
    outputs: list[Any] = []

    def predict() -> None:
        try:
            outputs.append(cache.get(records[0]).predict(x.tolist(), max_batch=64))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=predict) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert loads == [1]
    for out in outputs:
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)

    cache.get(records[1])
    cache.get(records[0])  # refreshes version 1, so version 2 is the least recently used
    cache.get(records[2])
    assert len(cache) == 2
    cache.get(records[0])
    assert loads == [1, 2, 3]
    cache.get(records[1])
    assert loads == [1, 2, 3, 2]


def test_cache_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity=0"):
        ModelCache(lambda record: None, capacity=0)
