"""Result types of a pruning run: `PruningReport` (JSON-safe summary) and `PruningResult`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

if TYPE_CHECKING:
    from spectral.selection import ModelSpectra


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _errors(errors: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    return {
        layer: {key: _finite_or_none(value) for key, value in pair.items()}
        for layer, pair in errors.items()
    }


@dataclass
class PruningReport:
    """What a pruning run did, in a form that serializes to JSON.

    Args:
        method: `"percentile"`, `"metric"` or `"pretrain"`.
        percentile: The percentile that was applied.
        scope: `"global"` or `"layer"`.
        min_units: Minimum number of nodes kept per layer.
        cutoff: The |eigenvalue| cutoff: a float for global scope, a dict layer path -> float
            for per-layer scope.
        units_before: Layer path -> number of nodes before pruning (Spectral layers only).
        units_after: Layer path -> number of nodes of the returned model's layer. A layer in
            `masked_layers` keeps its size: its removed nodes are zeroed, not sliced away.
        active_units_after: Layer path -> number of nodes still active after pruning (equal
            to `units_after` except for masked layers).
        nodes_removed_fraction: Removed nodes over all prunable nodes.
        params_before: Parameter count of the model before pruning.
        params_after: Parameter count of the returned model.
        metric_name: The compared metric, if any.
        metric_before: Metric of the unpruned model, if evaluated.
        metric_after: Metric of the returned model, if evaluated.
        evaluations: Search trace: dicts with `percentile`, `value` and `within_budget`.
        masked_layers: Layers whose removed nodes were kept masked instead of sliced.
        eigenvalues: Layer path -> eigenvalues of the model before pruning.
        max_delta_percent: The metric budget, for metric-based runs.
        higher_is_better: The compared metric's direction, when a metric was compared.
        reconstruction_method: `"least_squares"` or `"mean"` when layers were re-fitted on
            calibration rows (the search's evaluations are then of reconstructed models).
        calibration_rows: Calibration rows the reconstruction used.
        reconstruction_errors: Re-fitted layer path -> relative pre-activation error against
            the unpruned network, `{"before": ..., "after": ...}` re-fitting.
        reconstruction_fallbacks: Layer path -> why it kept the exact fold instead.
        recovery_epochs: Epochs of recovery training run (per round), if any.
        distill: Whether recovery distilled from the unpruned model.
        temperature: The distillation temperature, when distilling.
        steps: Rounds the removal was spread over.
        rounds: With `steps` > 1, one summary per round: `percentile` (of the nodes left),
            `active_units`, `params`, `reconstruction_errors` and `recovery_epochs`.
    """

    method: str
    percentile: float
    scope: str
    min_units: int
    cutoff: float | dict[str, float]
    units_before: dict[str, int]
    units_after: dict[str, int]
    nodes_removed_fraction: float
    params_before: int
    params_after: int
    metric_name: str | None = None
    metric_before: float | None = None
    metric_after: float | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    masked_layers: list[str] = field(default_factory=list)
    eigenvalues: dict[str, list[float]] = field(default_factory=dict)
    max_delta_percent: float | None = None
    active_units_after: dict[str, int] = field(default_factory=dict)
    higher_is_better: bool | None = None
    reconstruction_method: str | None = None
    calibration_rows: int | None = None
    reconstruction_errors: dict[str, dict[str, float | None]] = field(default_factory=dict)
    reconstruction_fallbacks: dict[str, str] = field(default_factory=dict)
    recovery_epochs: int | None = None
    distill: bool = False
    temperature: float | None = None
    steps: int = 1
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Returns the report as a JSON-safe dict (non-finite floats become `None`)."""
        cutoff: float | dict[str, float | None] | None
        if isinstance(self.cutoff, dict):
            cutoff = {k: _finite_or_none(v) for k, v in self.cutoff.items()}
        else:
            cutoff = _finite_or_none(self.cutoff)
        return {
            "method": self.method,
            "percentile": float(self.percentile),
            "scope": self.scope,
            "min_units": int(self.min_units),
            "cutoff": cutoff,
            "units_before": {k: int(v) for k, v in self.units_before.items()},
            "units_after": {k: int(v) for k, v in self.units_after.items()},
            "active_units_after": {k: int(v) for k, v in self.active_units_after.items()},
            "nodes_removed_fraction": float(self.nodes_removed_fraction),
            "params_before": int(self.params_before),
            "params_after": int(self.params_after),
            "metric_name": self.metric_name,
            "metric_before": _finite_or_none(self.metric_before),
            "metric_after": _finite_or_none(self.metric_after),
            "max_delta_percent": _finite_or_none(self.max_delta_percent),
            "higher_is_better": self.higher_is_better,
            "evaluations": [
                {
                    "percentile": float(e["percentile"]),
                    "value": _finite_or_none(e["value"]),
                    "within_budget": bool(e["within_budget"]),
                }
                for e in self.evaluations
            ],
            "masked_layers": list(self.masked_layers),
            "eigenvalues": {
                k: [_finite_or_none(x) for x in v] for k, v in self.eigenvalues.items()
            },
            "reconstruction_method": self.reconstruction_method,
            "calibration_rows": self.calibration_rows,
            "reconstruction_errors": _errors(self.reconstruction_errors),
            "reconstruction_fallbacks": dict(self.reconstruction_fallbacks),
            "recovery_epochs": self.recovery_epochs,
            "distill": bool(self.distill),
            "temperature": _finite_or_none(self.temperature),
            "steps": int(self.steps),
            "rounds": [
                {
                    "percentile": float(r["percentile"]),
                    "active_units": {k: int(v) for k, v in r["active_units"].items()},
                    "params": int(r["params"]),
                    "reconstruction_errors": _errors(r["reconstruction_errors"]),
                    "recovery_epochs": r["recovery_epochs"],
                }
                for r in self.rounds
            ],
        }


@dataclass
class PruningResult:
    """The pruned model and its report; unpacks as `model, report = result`."""

    model: keras.Model
    report: PruningReport

    def __iter__(self) -> Iterator[Any]:
        yield self.model
        yield self.report


def _units_after(spectra: ModelSpectra, keep: Mapping[str, np.ndarray]) -> dict[str, int]:
    return {
        path: int(keep[path].size) if path in keep else layer.units
        for path, layer in spectra.layers
    }


def _removed_fraction(spectra: ModelSpectra, keep: Mapping[str, np.ndarray]) -> float:
    by_path = spectra.by_path
    total = sum(by_path[p].units for p in spectra.prunable)
    removed = sum(by_path[p].units - keep[p].size for p in spectra.prunable)
    return float(removed / total) if total else 0.0


def build_report(
    method: str,
    model: keras.Model,
    new_model: keras.Model,
    spectra: ModelSpectra,
    keep: Mapping[str, np.ndarray],
    percentile: float,
    cutoff: float | dict[str, float],
    scope: str,
    min_units: int,
    masked_layers: list[str],
) -> PruningReport:
    """The report of a pruning run, before metrics and options are recorded on it."""
    active = _units_after(spectra, keep)
    return PruningReport(
        method=method,
        percentile=percentile,
        scope=scope,
        min_units=min_units,
        cutoff=cutoff,
        units_before={path: layer.units for path, layer in spectra.layers},
        units_after={
            path: spectra.by_path[path].units if path in masked_layers else units
            for path, units in active.items()
        },
        active_units_after=active,
        nodes_removed_fraction=_removed_fraction(spectra, keep),
        params_before=int(model.count_params()),
        params_after=int(new_model.count_params()),
        masked_layers=masked_layers,
        eigenvalues={p: [float(x) for x in v] for p, v in spectra.eigenvalues().items()},
    )
