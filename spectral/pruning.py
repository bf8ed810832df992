"""Spectral pruning entry points: `prune`, `prune_percentile` and `metric_based_pruning`.

Nodes with small |eigenvalue| are removed physically (see `spectral.compaction`); where a
consumer cannot be sliced safely the layer's nodes are masked instead, with a warning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from spectral.compaction import compact_model
from spectral.compiling import compile_model
from spectral.evaluation import evaluate
from spectral.graph import Plan, Planner
from spectral.masking import MaskedCopy, masked_model
from spectral.report import PruningReport, PruningResult
from spectral.search import (
    Progress,
    lower_is_better,
    notify,
    pick_metric,
    search_percentile,
    within_budget,
)
from spectral.selection import (
    ModelSpectra,
    analyse,
    check_max_delta_percent,
    check_min_units,
    check_percentile,
    check_scope,
    select_nodes,
)

logger = logging.getLogger(__name__)


def plan_pruning(
    model: keras.Model, spectra: ModelSpectra, keep: Mapping[str, np.ndarray]
) -> tuple[Plan, dict[str, str]]:
    """Plans the compaction for `keep`, masking layers whose consumers cannot be sliced.

    Returns:
        `(plan, masked)`: the conflict-free plan and path -> reason for each masked layer.
    """
    by_path = spectra.by_path
    path_of = {id(layer): path for path, layer in spectra.layers}
    reduced = {path: kept for path, kept in keep.items() if kept.size < by_path[path].units}
    masked: dict[str, str] = {}
    while True:
        slice_ids = {id(by_path[p]): k for p, k in reduced.items() if p not in masked}
        mask_ids = {id(by_path[p]): reduced[p] for p in masked}
        plan = Planner(model, slice_ids, mask_ids).run()
        new = {path_of[i]: why for i, why in plan.conflicts.items() if path_of[i] not in masked}
        if not new:
            return plan, masked
        masked.update(new)


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


def _prune_at(
    model: keras.Model,
    spectra: ModelSpectra,
    keep: Mapping[str, np.ndarray],
    compact: bool,
) -> tuple[keras.Model, list[str]]:
    if not compact:
        return masked_model(model, keep), sorted(
            p for p in spectra.prunable if keep[p].size < spectra.by_path[p].units
        )
    plan, masked = plan_pruning(model, spectra, keep)
    for path, reason in masked.items():
        warnings.warn(
            f"Spectral layer '{path}' is masked instead of sliced: {reason} cannot be sliced "
            "safely.",
            stacklevel=3,
        )
    return compact_model(model, plan), sorted(masked)


def _report(
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


def prune_percentile(
    model: keras.Model,
    percentile_threshold: float,
    compile_dictionary: Mapping[str, Any] | None = None,
    *,
    scope: str = "global",
    min_units: int = 1,
    compact: bool = True,
) -> keras.Model:
    """Removes the nodes whose |eigenvalue| is below a percentile; returns a new model.

    Args:
        model: A built Sequential or Functional model with Spectral layers. Not modified.
        percentile_threshold: In [0, 100]. Nodes strictly below
            `np.percentile(|eigenvalues|, percentile_threshold)` are removed.
        compile_dictionary: Keyword arguments of `model.compile` for the returned model.
        scope: `"global"` (one cutoff over all prunable layers) or `"layer"`.
        min_units: Nodes always kept per layer.
        compact: `True` slices removed nodes out; `False` returns a same-size masked copy.

    Returns:
        The pruned model, compiled when `compile_dictionary` is given.

    Raises:
        ValueError: On a percentile outside [0, 100], bad `scope`/`min_units`, or a model
            without prunable Spectral layers.

    Example:

    >>> small = prune_percentile(model, 50, {"optimizer": "adam", "loss": "mse"})
    """
    return prune(
        model,
        percentile=percentile_threshold,
        compile_dictionary=compile_dictionary,
        scope=scope,
        min_units=min_units,
        compact=compact,
    ).model


def metric_based_pruning(
    model: keras.Model,
    eval_dictionary: Mapping[str, Any],
    compile_dictionary: Mapping[str, Any] | None,
    compare_metric: str = "accuracy",
    max_delta_percent: float = 10,
    percentile_step: float = 5,
    *,
    scope: str = "global",
    min_units: int = 1,
    higher_is_better: bool | None = None,
) -> keras.Model:
    """Returns the most pruned model whose metric stays within `max_delta_percent` %.

    Args:
        model: A built Sequential or Functional model with Spectral layers. Not modified.
        eval_dictionary: Keyword arguments of `model.evaluate` (`x`, `y`, `batch_size`, ...).
        compile_dictionary: Keyword arguments of `model.compile`.
        compare_metric: Evaluation result compared, e.g. `"accuracy"` or `"loss"`.
        max_delta_percent: Allowed relative worsening, in percent of |unpruned value|.
        percentile_step: Spacing of the percentile grid searched.
        scope: `"global"` or `"layer"`.
        min_units: Nodes always kept per layer.
        higher_is_better: Direction of `compare_metric`; `None` infers it from the name
            (losses, errors, crossentropies and false positives/negatives are lower-is-better).

    Returns:
        The compact pruned model, compiled.

    Raises:
        ValueError: If the metric is not among the evaluation results (the message lists
            them), or on invalid arguments.

    Example:

    >>> small = metric_based_pruning(model, {"x": x, "y": y}, {"loss": "mse"}, "loss", 5)
    """
    return prune(
        model,
        eval_dictionary=eval_dictionary,
        compile_dictionary=compile_dictionary,
        compare_metric=compare_metric,
        max_delta_percent=max_delta_percent,
        percentile_step=percentile_step,
        scope=scope,
        min_units=min_units,
        higher_is_better=higher_is_better,
    ).model


def prune(
    model: keras.Model,
    *,
    percentile: float | None = None,
    eval_dictionary: Mapping[str, Any] | None = None,
    compile_dictionary: Mapping[str, Any] | None = None,
    compare_metric: str = "accuracy",
    max_delta_percent: float = 10.0,
    percentile_step: float = 5.0,
    scope: str = "global",
    min_units: int = 1,
    progress: Progress | None = None,
    compact: bool = True,
    higher_is_better: bool | None = None,
) -> PruningResult:
    """Prunes a model by percentile, or by searching the largest percentile within a budget.

    Args:
        model: A built Sequential or Functional model with Spectral layers. Not modified.
        percentile: Percentile to prune at. `None` runs the metric-based search, which
            needs `eval_dictionary`.
        eval_dictionary: Keyword arguments of `model.evaluate`. With `percentile`, the metric
            is reported before and after.
        compile_dictionary: Keyword arguments of `model.compile`; defaults to the model's own
            compile configuration when it is compiled.
        compare_metric: Evaluation result compared (`"accuracy"`, `"loss"`, ...).
        max_delta_percent: Allowed relative worsening, in percent of |unpruned value|.
        percentile_step: Spacing of the searched percentile grid, in (0, 100].
        scope: `"global"` or `"layer"`.
        min_units: Nodes always kept per layer.
        progress: Optional `progress(fraction, message)`; its exceptions propagate.
        compact: `False` returns a same-size masked model instead of slicing.
        higher_is_better: Direction of `compare_metric`; `None` infers it from the name.

    Returns:
        A `PruningResult` (`model, report = prune(...)`).

    Raises:
        ValueError: On invalid arguments, a model without prunable Spectral layers, a
            missing metric, or nothing to compile the evaluation copy with.

    Example:

    >>> model_small, report = prune(model, eval_dictionary={"x": x, "y": y},
    ...                             compare_metric="loss", max_delta_percent=5)
    >>> report.to_dict()["nodes_removed_fraction"]
    """
    scope = check_scope(scope)
    min_units = check_min_units(min_units)
    if percentile is not None:
        percentile = check_percentile(percentile)
    else:
        if eval_dictionary is None:
            raise ValueError(
                "Metric-based pruning needs `eval_dictionary` (or pass `percentile`). "
                "Received: percentile=None, eval_dictionary=None"
            )
        step = check_percentile(percentile_step, "percentile_step")
        if step <= 0:
            raise ValueError(
                f"`percentile_step` must be in (0, 100]. Received: percentile_step={step}"
            )
    max_delta_percent = check_max_delta_percent(max_delta_percent)
    notify(progress, 0.0, "analysing model")
    spectra = analyse(model)
    metric_before: float | None = None
    evaluations: list[dict[str, Any]] = []
    if percentile is None:
        assert eval_dictionary is not None
        method = "metric"
        masked = MaskedCopy(model)
        compile_model(masked.model, model, compile_dictionary, required=True)
        outcome = search_percentile(
            masked,
            spectra,
            eval_dictionary,
            compare_metric,
            max_delta_percent,
            step,
            scope,
            min_units,
            progress,
            higher_is_better,
        )
        percentile, keep, cutoff = outcome.percentile, outcome.keep, outcome.cutoff
        metric_before, evaluations = outcome.metric_before, outcome.evaluations
    else:
        method = "percentile"
        keep, cutoff = select_nodes(spectra, percentile, scope, min_units)
        if eval_dictionary is not None:
            masked = MaskedCopy(model)
            compile_model(masked.model, model, compile_dictionary, required=True)
            metric_before = pick_metric(masked.evaluate(eval_dictionary), compare_metric)
    notify(progress, 0.9, f"pruning at percentile {percentile:g}")
    new_model, masked_layers = _prune_at(model, spectra, keep, compact)
    compiled = compile_model(new_model, model, compile_dictionary, required=False)
    report = _report(
        method, model, new_model, spectra, keep, percentile, cutoff, scope, min_units, masked_layers
    )
    if eval_dictionary is not None and compiled:
        report.metric_after = pick_metric(evaluate(new_model, eval_dictionary), compare_metric)
        report.metric_name = compare_metric
        report.higher_is_better = (
            not lower_is_better(compare_metric) if higher_is_better is None else higher_is_better
        )
        report.metric_before = metric_before
        report.max_delta_percent = float(max_delta_percent)
        if method == "percentile" and metric_before is not None:
            ok = within_budget(
                report.metric_after,
                metric_before,
                compare_metric,
                max_delta_percent,
                higher_is_better=higher_is_better,
            )
            evaluations = [
                {"percentile": percentile, "value": report.metric_after, "within_budget": ok}
            ]
    report.evaluations = evaluations
    logger.info(
        "Pruned %s at percentile %g: %d -> %d parameters",
        model.name,
        percentile,
        report.params_before,
        report.params_after,
    )
    notify(progress, 1.0, "done")
    return PruningResult(model=new_model, report=report)
