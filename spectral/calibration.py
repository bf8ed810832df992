"""Rows of data the library runs models on itself: calibration and recovery inputs.

Reconstruction and recovery both take inputs the way Keras does (an array, or a list/dict of
arrays for several model inputs) and walk them in chunks. This module owns counting those rows
and slicing them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import keras
import numpy as np


def count_rows(x: Any) -> int:
    """Rows of an array, or of the first array of a list/dict of arrays (0 when there is none)."""
    leaves = keras.tree.flatten(x)
    if not leaves or np.ndim(leaves[0]) == 0:
        return 0
    return int(np.shape(leaves[0])[0])


def slice_rows(x: Any, start: int, stop: int) -> Any:
    """Rows `start:stop` of every array in `x`."""
    return keras.tree.map_structure(lambda a: a[start:stop], x)


def _describe(x: Any) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"<{type(x).__name__} of shape {tuple(x.shape)}, dtype {x.dtype}>"
    return f"<{type(x).__name__}>"


def _is_stream(x: Any) -> bool:
    return hasattr(x, "element_spec") or isinstance(x, Iterator | keras.utils.PyDataset)


def reject_stream(value: Any, name: str) -> None:
    """Raises a TypeError naming `name` if `value` is a dataset, generator or PyDataset.

    Datasets, generators and PyDatasets yield batches: their rows cannot be counted or sliced.
    """
    if _is_stream(value):
        raise TypeError(
            f"`{name}` must be arrays of rows, not a dataset or generator; collect the rows "
            f"first (e.g. `np.concatenate([x for x, *_ in dataset])`). Received: "
            f"{name}={_describe(value)}"
        )


def _numeric(value: Any, name: str) -> np.ndarray:
    """`value` as a numeric array, or a TypeError naming `name`."""
    reject_stream(value, name)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"`{name}` must be a numeric array. Received: {name}={_describe(value)} ({exc})"
        ) from exc
    if array.dtype.kind not in "biuf" or array.ndim == 0:
        raise TypeError(f"`{name}` must be a numeric array. Received: {name}={_describe(array)}")
    return array


def _check_finite(array: np.ndarray, name: str) -> None:
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"`{name}` holds {bad} NaN or infinite values. Received: {name}={_describe(array)}"
        )


def _as_array(value: Any, name: str, spec: Any) -> np.ndarray:
    array = _numeric(value, name)
    expected = tuple(spec.shape)
    if array.ndim != len(expected) or any(
        want is not None and want != got
        for want, got in zip(expected[1:], array.shape[1:], strict=True)
    ):
        shape = ("rows", *expected[1:])
        raise ValueError(
            f"`{name}` must have shape {shape} to match the model's input. "
            f"Received: {name}={_describe(array)}"
        )
    if array.shape[0] == 0:
        raise ValueError(
            f"`{name}` must hold at least one row. Received: {name}={_describe(array)}"
        )
    _check_finite(array, name)
    return array.astype(spec.dtype or keras.config.floatx(), copy=False)


def model_rows(model: keras.Model, x: Any, name: str) -> Any:
    """`x` checked against `model`'s inputs, as arrays of the inputs' dtype.

    Accepts what `model(x)` accepts with rows to count: an array (or nested list of numbers)
    for a single-input model, a list of arrays (one per input) or a dict keyed by input name.

    Raises:
        TypeError: If `x` is a dataset or generator, not numeric, or not structured like the
            model's inputs.
        ValueError: If an array has the wrong shape, no rows, NaN or infinite values, or the
            arrays disagree on the number of rows.
    """
    specs = list(model.inputs)
    if len(specs) == 1:
        if isinstance(x, Mapping) and len(x) == 1:
            ((key, value),) = x.items()
            return {key: _as_array(value, f"{name}[{key!r}]", specs[0])}
        if isinstance(x, list | tuple) and len(x) == 1 and hasattr(x[0], "shape"):
            x = x[0]
        return _as_array(x, name, specs[0])
    if isinstance(x, Mapping):
        names = [spec.name for spec in specs]
        if sorted(x) != sorted(names):
            raise TypeError(
                f"`{name}` must have one entry per model input, keyed {names}. "
                f"Received: {name} with keys {sorted(x)}"
            )
        spec_of = dict(zip(names, specs, strict=True))
        arrays: Any = {k: _as_array(v, f"{name}[{k!r}]", spec_of[k]) for k, v in x.items()}
    elif isinstance(x, list | tuple) and len(x) == len(specs):
        arrays = [
            _as_array(v, f"{name}[{i}]", s) for i, (v, s) in enumerate(zip(x, specs, strict=True))
        ]
    else:
        raise TypeError(
            f"The model has {len(specs)} inputs: `{name}` must be a list of {len(specs)} arrays "
            f"or a dict keyed by input name. Received: {name}={_describe(x)}"
        )
    rows = {int(np.shape(a)[0]) for a in keras.tree.flatten(arrays)}
    if len(rows) > 1:
        raise ValueError(
            f"The arrays of `{name}` must have the same number of rows. "
            f"Received: rows {sorted(rows)}"
        )
    return arrays


def label_rows(y: Any, rows: int, name: str) -> np.ndarray:
    """Labels `y` as a numeric array with `rows` rows and finite values.

    Raises:
        TypeError: If `y` is a dataset or generator, or not numeric.
        ValueError: If `y` has another number of rows, or NaN or infinite values.
    """
    array = _numeric(y, name)
    if array.shape[0] != rows:
        raise ValueError(
            f"`{name}` must have one row per input row ({rows}). "
            f"Received: {name}={_describe(array)}"
        )
    _check_finite(array, name)
    return array
