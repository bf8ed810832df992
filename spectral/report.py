"""Result types of a pruning run: `PruningReport` (JSON-safe summary) and `PruningResult`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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
        }


@dataclass
class PruningResult:
    """The pruned model and its report; unpacks as `model, report = result`."""

    model: keras.Model
    report: PruningReport

    def __iter__(self) -> Iterator[Any]:
        yield self.model
        yield self.report
