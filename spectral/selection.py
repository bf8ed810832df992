"""Which nodes a percentile removes: argument checks, prunable layers, cutoffs, `min_units`."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import keras
import numpy as np

from spectral.activations import is_elementwise_activation
from spectral.graph import Planner, spectral_layers
from spectral.layer import Spectral

logger = logging.getLogger(__name__)

SCOPES = ("global", "layer")


def check_percentile(value: object, name: str = "percentile") -> float:
    """Returns `value` as a float in [0, 100].

    Raises:
        ValueError: If `value` is not a number in [0, 100].
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"`{name}` must be a number in [0, 100]. Received: {name}={value!r}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 100.0:
        raise ValueError(f"`{name}` must be a number in [0, 100]. Received: {name}={value!r}")
    return number


def check_max_delta_percent(value: object) -> float:
    """Returns `value` as a finite float >= 0.

    Raises:
        ValueError: If `value` is not a finite number >= 0.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(
            f"`max_delta_percent` must be a number >= 0. Received: max_delta_percent={value!r}"
        )
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(
            f"`max_delta_percent` must be a number >= 0. Received: max_delta_percent={value!r}"
        )
    return number


def check_scope(scope: object) -> str:
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {SCOPES}. Received: scope={scope!r}")
    return str(scope)


def check_min_units(min_units: object) -> int:
    if isinstance(min_units, bool) or not isinstance(min_units, int | np.integer) or min_units < 1:
        raise ValueError(f"`min_units` must be an integer >= 1. Received: min_units={min_units!r}")
    return int(min_units)


@dataclass
class ModelSpectra:
    """The Spectral layers of a model, split into prunable ones and the rest.

    Args:
        layers: `(path, layer)` for every Spectral layer.
        prunable: Paths of the layers pruning may remove nodes from.
        excluded: Path -> why the layer is never pruned (feeds an output, non-elementwise
            activation).
    """

    layers: list[tuple[str, Spectral]]
    prunable: list[str]
    excluded: dict[str, str]

    @property
    def by_path(self) -> dict[str, Spectral]:
        return dict(self.layers)

    def eigenvalues(self) -> dict[str, np.ndarray]:
        return {path: layer.eigenvalues for path, layer in self.layers}


def analyse(model: keras.Model) -> ModelSpectra:
    """Finds the Spectral layers of `model` and which of them may be pruned.

    A Spectral layer whose nodes reach a model output (directly or through pass-through layers)
    is never pruned, and neither is one whose activation mixes features (e.g. softmax).

    Raises:
        ValueError: If the model has no Spectral layer, or none that may be pruned.
    """
    layers = spectral_layers(model)
    if not layers:
        raise ValueError(f"The model has no Spectral layers to prune. Received: model={model.name}")
    excluded: dict[str, str] = {}
    candidates: dict[int, np.ndarray] = {}
    for path, layer in layers:
        if is_elementwise_activation(layer.activation):
            candidates[id(layer)] = np.zeros(0, dtype=int)
        else:
            excluded[path] = "activation is not elementwise"
    # Structural pass: pretend every candidate loses all nodes and see what reaches the outputs.
    plan = Planner(model, candidates).run()
    for path, layer in layers:
        if id(layer) in plan.output_sources:
            excluded[path] = "feeds a model output"
    prunable = [path for path, _ in layers if path not in excluded]
    if not prunable:
        reasons = "; ".join(f"'{path}' {why}" for path, why in excluded.items())
        raise ValueError(
            "The model has no prunable Spectral layers (a Spectral layer feeding a model output "
            "is never pruned, nor one whose activation is not a registered elementwise "
            f"function): {reasons}. Received: model={model.name}"
        )
    return ModelSpectra(layers=layers, prunable=prunable, excluded=excluded)


def _enforce_min_units(magnitude: np.ndarray, kept: np.ndarray, min_units: int) -> np.ndarray:
    floor = min(min_units, magnitude.size)
    if kept.size >= floor:
        return kept
    order = np.argsort(-magnitude, kind="stable")[:floor]
    return np.sort(order)


def select_nodes(
    spectra: ModelSpectra, percentile: float, scope: str = "global", min_units: int = 1
) -> tuple[dict[str, np.ndarray], float | dict[str, float]]:
    """Chooses the nodes to keep: those whose |eigenvalue| is not below the percentile.

    Args:
        spectra: The model's Spectral layers, from `analyse`.
        percentile: In [0, 100]; nodes strictly below `np.percentile(|eigenvalues|, percentile)`
            are removed.
        scope: `"global"` (one cutoff over all prunable layers) or `"layer"` (one per layer).
        min_units: Each layer keeps at least this many nodes (its largest |eigenvalues|).

    Returns:
        `(keep, cutoff)`: path -> sorted kept indices for each prunable layer, and the cutoff
        (float, or dict path -> float for per-layer scope).
    """
    eigenvalues = spectra.eigenvalues()
    magnitudes = {path: np.abs(eigenvalues[path]) for path in spectra.prunable}
    cutoffs: dict[str, float]
    cutoff: float | dict[str, float]
    if scope == "global":
        value = float(np.percentile(np.concatenate(list(magnitudes.values())), percentile))
        cutoffs = dict.fromkeys(magnitudes, value)
        cutoff = value
    else:
        cutoffs = {p: float(np.percentile(m, percentile)) for p, m in magnitudes.items()}
        cutoff = dict(cutoffs)
    keep = {
        path: _enforce_min_units(m, np.flatnonzero(m >= cutoffs[path]), min_units)
        for path, m in magnitudes.items()
    }
    return keep, cutoff
