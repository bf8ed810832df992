"""Masking: zero removed nodes in place of slicing them, on one same-size copy of a model.

A masked node has its incoming `base` column, eigenvalue and bias set to zero, so it outputs the
constant act(0). The masked model is the reference that compaction must reproduce exactly, and
one masked copy, compiled once, serves every step of the metric-based search.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from spectral.compaction import copy_model
from spectral.evaluation import evaluate
from spectral.graph import spectral_layers
from spectral.layer import to_numpy
from spectral.rules import mask_nodes


class MaskedCopy:
    """A same-size copy of a model whose Spectral nodes can be masked and unmasked cheaply.

    Args:
        model: The model to copy; it is never modified.

    Example:

    >>> masked = MaskedCopy(model)
    >>> masked.apply({"spectral": np.array([0, 2])})  # keep nodes 0 and 2 only
    >>> masked.model.predict(x)
    """

    def __init__(self, model: keras.Model) -> None:
        self.model = copy_model(model)
        self._layers = dict(spectral_layers(self.model))
        self._originals: dict[str, dict[str, np.ndarray]] = {
            path: {v.name: to_numpy(v) for v in layer.weights}
            for path, layer in self._layers.items()
        }

    def apply(self, keep: Mapping[str, np.ndarray | None]) -> None:
        """Masks every node not listed in `keep[path]`; layers absent from `keep` are restored."""
        for path, layer in self._layers.items():
            original = self._originals[path]
            kept = keep.get(path)
            base, diag_end, bias = mask_nodes(
                original["base"],
                original["diag_end"],
                original.get("bias"),
                np.arange(layer.units) if kept is None else kept,
            )
            layer.base.assign(base)
            layer.diag_end.assign(diag_end)
            if layer.bias is not None:
                layer.bias.assign(bias)

    def evaluate(self, eval_dictionary: Mapping[str, Any]) -> dict[str, float]:
        """Evaluates the masked copy on `eval_dictionary`; returns its results by name."""
        return evaluate(self.model, eval_dictionary)


def masked_model(model: keras.Model, keep: Mapping[str, np.ndarray | None]) -> keras.Model:
    """Returns a same-size copy of `model` with the nodes outside `keep` zeroed (masked)."""
    masked = MaskedCopy(model)
    masked.apply(keep)
    return masked.model
