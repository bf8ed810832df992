"""Evaluating a compiled model on `eval_dictionary`, fast when the data is small and in memory.

`model.evaluate` builds a fresh input pipeline on every call, which costs far more than the
forward pass for the few thousand rows a pruning search evaluates again and again. When the
evaluation data is in-memory arrays of at most `SINGLE_BATCH_MAX_ROWS` rows, the whole set goes
through the compiled test step as one batch (`test_on_batch`): the same metrics, without the
per-call pipeline. Anything else (datasets, generators, callbacks, `steps`) goes to `evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

SINGLE_BATCH_MAX_ROWS = 16384
_SINGLE_BATCH_KEYS = {"x", "y", "sample_weight", "batch_size", "verbose", "return_dict"}


def _rows(data: Any) -> int | None:
    """The shared first dimension of an array or a list/dict of arrays; None otherwise."""
    if isinstance(data, np.ndarray):
        return int(data.shape[0]) if data.ndim else None
    parts = list(data.values()) if isinstance(data, Mapping) else data
    if isinstance(parts, list | tuple) and parts:
        sizes = {_rows(part) for part in parts}
        if len(sizes) == 1:
            return sizes.pop()
    return None


def fits_one_batch(eval_dictionary: Mapping[str, Any]) -> bool:
    """Whether `evaluate` sends `eval_dictionary` through the test step as a single batch."""
    if not set(eval_dictionary) <= _SINGLE_BATCH_KEYS or "x" not in eval_dictionary:
        return False
    rows = _rows(eval_dictionary["x"])
    if rows is None or rows == 0 or rows > SINGLE_BATCH_MAX_ROWS:
        return False
    return all(
        eval_dictionary.get(key) is None or _rows(eval_dictionary[key]) == rows
        for key in ("y", "sample_weight")
    )


def evaluate(model: keras.Model, eval_dictionary: Mapping[str, Any]) -> dict[str, float]:
    """Evaluates a compiled model and returns its results by name (`loss`, metrics).

    Args:
        model: A compiled Keras model.
        eval_dictionary: Keyword arguments of `model.evaluate` (`x`, `y`, ...).

    Returns:
        Each evaluation result as a float, keyed by name.
    """
    if fits_one_batch(eval_dictionary):
        results = model.test_on_batch(
            eval_dictionary["x"],
            eval_dictionary.get("y"),
            sample_weight=eval_dictionary.get("sample_weight"),
            return_dict=True,
        )
    else:
        results = model.evaluate(**{**eval_dictionary, "return_dict": True, "verbose": 0})
    return {name: float(np.asarray(value)) for name, value in results.items()}
