"""Metric-based search: the largest percentile whose metric stays within a relative budget.

The search evaluates one masked, compiled copy of the model (weights reassigned per step, no
re-cloning or recompiling), or, with reconstruction, the reconstructed model at each point. It
bisects over the percentile grid `0, step, 2*step, ... <= 100`, assuming the metric degrades
monotonically as more nodes are removed.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from spectral.selection import ModelSpectra, select_nodes

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


def notify(progress: Progress | None, fraction: float, message: str) -> None:
    """Calls `progress(fraction, message)` if given; its exceptions propagate (cancellation)."""
    if progress is not None:
        progress(fraction, message)


def scaled_progress(progress: Progress | None, start: float, span: float) -> Progress | None:
    """A callback mapping a stage's fractions 0..1 onto `start .. start + span` of `progress`."""
    if progress is None:
        return None
    outer = progress

    def inner(fraction: float, message: str) -> None:
        outer(start + span * fraction, message)

    return inner


class Probe(Protocol):
    """What the search evaluates: a model whose active nodes can be set (`MaskedCopy`)."""

    def apply(self, keep: Mapping[str, np.ndarray | None]) -> None: ...

    def evaluate(self, eval_dictionary: Mapping[str, Any]) -> dict[str, float]: ...


_LOWER_IS_BETTER = re.compile(
    r"(loss|error|crossentropy|mse|mae|mape|msle|hinge|log_?cosh|kl_divergence|kld|poisson|huber"
    r"|false_positives|false_negatives)",
    re.IGNORECASE,
)


def lower_is_better(metric_name: str) -> bool:
    """Whether a smaller value of `metric_name` is better (losses and errors)."""
    return bool(_LOWER_IS_BETTER.search(metric_name))


def within_budget(
    value: float,
    reference: float,
    metric_name: str,
    max_delta_percent: float,
    *,
    higher_is_better: bool | None = None,
) -> bool:
    """Whether `value` is at most `max_delta_percent` % worse than `reference`.

    The direction comes from `higher_is_better`, or from the metric's name when it is `None`.
    """
    if not math.isfinite(value):
        return False
    allowed = abs(reference) * max_delta_percent / 100.0
    lower = lower_is_better(metric_name) if higher_is_better is None else not higher_is_better
    if lower:
        return value <= reference + allowed
    return value >= reference - allowed


def pick_metric(results: Mapping[str, float], metric_name: str) -> float:
    """Returns `results[metric_name]`.

    Raises:
        ValueError: If the metric is missing; the message lists the available names.
    """
    if metric_name not in results:
        raise ValueError(
            f"Metric '{metric_name}' is not among the evaluation results. Available: "
            f"{sorted(results)}. Received: compare_metric={metric_name!r}"
        )
    return float(results[metric_name])


def percentile_grid(step: float) -> list[float]:
    """Returns `[0, step, 2*step, ...]` up to and including 100 when it is on the grid."""
    count = int(math.floor(100.0 / step + 1e-9))
    return [round(i * step, 10) for i in range(count + 1)]


@dataclass
class SearchOutcome:
    """The chosen percentile and the trace of evaluations that led to it."""

    percentile: float
    keep: dict[str, np.ndarray]
    cutoff: float | dict[str, float]
    metric_before: float
    metric_at_choice: float
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def search_percentile(
    probe: Probe,
    spectra: ModelSpectra,
    eval_dictionary: Mapping[str, Any],
    compare_metric: str,
    max_delta_percent: float,
    percentile_step: float,
    scope: str,
    min_units: int,
    progress: Progress | None = None,
    higher_is_better: bool | None = None,
) -> SearchOutcome:
    """Bisects the percentile grid for the most pruned point within the metric budget.

    Args:
        probe: What is evaluated at each point: a compiled `MaskedCopy` of the model, or a
            `ReconstructedProbe` to check the budget on reconstructed models.
        spectra: The model's Spectral layers, from `selection.analyse`.
        eval_dictionary: Keyword arguments of `model.evaluate`.
        compare_metric: Name of the result compared (e.g. `"accuracy"`, `"loss"`).
        max_delta_percent: Allowed relative worsening, in percent of |unpruned value|.
        percentile_step: Grid spacing, in (0, 100].
        scope: `"global"` or `"layer"`.
        min_units: Nodes always kept per layer.
        progress: Optional `progress(fraction, message)` callback.
        higher_is_better: The metric's direction; `None` infers it from the name.

    Returns:
        A `SearchOutcome`; its percentile is always a grid point whose evaluation was in budget.
    """
    grid = percentile_grid(percentile_step)
    budget_steps = 2 + max(1, math.ceil(math.log2(max(len(grid), 2))))
    evaluations: list[dict[str, Any]] = []
    cache: dict[int, tuple[float, bool, dict[str, np.ndarray], Any]] = {}

    probe.apply({})
    reference = pick_metric(probe.evaluate(eval_dictionary), compare_metric)
    logger.info("Unpruned %s = %.6g", compare_metric, reference)

    def evaluate(index: int) -> bool:
        if index in cache:
            return cache[index][1]
        percentile = grid[index]
        keep, cutoff = select_nodes(spectra, percentile, scope, min_units)
        probe.apply(keep)
        value = pick_metric(probe.evaluate(eval_dictionary), compare_metric)
        ok = within_budget(
            value, reference, compare_metric, max_delta_percent, higher_is_better=higher_is_better
        )
        cache[index] = (value, ok, keep, cutoff)
        evaluations.append({"percentile": percentile, "value": value, "within_budget": ok})
        logger.info(
            "percentile %g: %s = %.6g (%s)",
            percentile,
            compare_metric,
            value,
            "within budget" if ok else "over budget",
        )
        fraction = min(0.9, 0.1 + 0.8 * len(evaluations) / budget_steps)
        notify(progress, fraction, f"percentile {percentile:g}: {compare_metric}={value:.4g}")
        return ok

    # Percentile 0 removes nothing (no |eigenvalue| is below the minimum): it is the reference.
    keep0, cutoff0 = select_nodes(spectra, 0.0, scope, min_units)
    cache[0] = (reference, True, keep0, cutoff0)
    evaluations.append({"percentile": 0.0, "value": reference, "within_budget": True})
    low, high = 0, len(grid) - 1
    if high > 0 and evaluate(high):
        low = high
    else:
        while high - low > 1:
            middle = (low + high) // 2
            if evaluate(middle):
                low = middle
            else:
                high = middle
    value, _, keep, cutoff = cache[low]
    probe.apply({})
    return SearchOutcome(
        percentile=grid[low],
        keep=keep,
        cutoff=cutoff,
        metric_before=reference,
        metric_at_choice=value,
        evaluations=evaluations,
    )
