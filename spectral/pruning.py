"""Spectral pruning entry points: `prune`, `prune_percentile` and `metric_based_pruning`.

Nodes with small |eigenvalue| are removed physically (see `spectral.compaction`); where a
consumer cannot be sliced safely the layer's nodes are masked instead, with a warning. By
default the result computes exactly what the masked model computes; the compression options
(`spectral.options`) add reconstruction on calibration rows, recovery training and gradual
rounds (`spectral.applying`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import keras

from spectral.applying import ReconstructedProbe, apply_selection, record_options
from spectral.compiling import compile_model
from spectral.evaluation import evaluate
from spectral.masking import MaskedCopy
from spectral.options import check_data, check_options
from spectral.report import PruningResult, build_report
from spectral.search import (
    Probe,
    Progress,
    lower_is_better,
    notify,
    pick_metric,
    scaled_progress,
    search_percentile,
    within_budget,
)
from spectral.selection import (
    analyse,
    check_max_delta_percent,
    check_min_units,
    check_percentile,
    check_scope,
    select_nodes,
)

logger = logging.getLogger(__name__)


def prune_percentile(
    model: keras.Model,
    percentile_threshold: float,
    compile_dictionary: Mapping[str, Any] | None = None,
    *,
    scope: str = "global",
    min_units: int = 1,
    compact: bool = True,
    calibration: Mapping[str, Any] | None = None,
    reconstruct: str | None = None,
    recover: Mapping[str, Any] | None = None,
    distill: bool = False,
    temperature: float = 2.0,
    steps: int = 1,
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
        calibration, reconstruct, recover, distill, temperature, steps: The compression
            options of `prune`. Without them the result computes exactly what the masked
            model computes.

    Returns:
        The pruned model, compiled when `compile_dictionary` is given.

    Raises:
        ValueError: On a percentile outside [0, 100], bad `scope`/`min_units` or options, or
            a model without prunable Spectral layers.
        TypeError: On calibration or recovery rows that are not arrays (see `prune`).

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
        calibration=calibration,
        reconstruct=reconstruct,
        recover=recover,
        distill=distill,
        temperature=temperature,
        steps=steps,
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
    calibration: Mapping[str, Any] | None = None,
    reconstruct: str | None = None,
    recover: Mapping[str, Any] | None = None,
    distill: bool = False,
    temperature: float = 2.0,
    steps: int = 1,
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
        calibration, reconstruct, recover, distill, temperature, steps: The compression
            options of `prune`. With `reconstruct`, the budget is checked on the
            reconstructed model at each probed percentile.

    Returns:
        The compact pruned model, compiled.

    Raises:
        ValueError: If the metric is not among the evaluation results (the message lists
            them), or on invalid arguments.
        TypeError: On calibration or recovery rows that are not arrays (see `prune`).

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
        calibration=calibration,
        reconstruct=reconstruct,
        recover=recover,
        distill=distill,
        temperature=temperature,
        steps=steps,
    ).model


def _check_step(eval_dictionary: Any, percentile_step: Any) -> float:
    if eval_dictionary is None:
        raise ValueError(
            "Metric-based pruning needs `eval_dictionary` (or pass `percentile`). "
            "Received: percentile=None, eval_dictionary=None"
        )
    step = check_percentile(percentile_step, "percentile_step")
    if step <= 0:
        raise ValueError(f"`percentile_step` must be in (0, 100]. Received: percentile_step={step}")
    return step


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
    calibration: Mapping[str, Any] | None = None,
    reconstruct: str | None = None,
    recover: Mapping[str, Any] | None = None,
    distill: bool = False,
    temperature: float = 2.0,
    steps: int = 1,
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
        progress: Optional `progress(fraction, message)`, also called per reconstructed layer
            and per recovery epoch; an exception it raises cancels the run (between epochs
            during recovery) and propagates.
        compact: `False` returns a same-size masked model instead of slicing.
        higher_is_better: Direction of `compare_metric`; `None` infers it from the name.
        calibration: `{"x": inputs}`, rows the reconstruction re-fits on. Needed by, and
            only used by, `reconstruct`.
        reconstruct: `None` (default: exact folding, the masked model's function),
            `"least_squares"` or `"mean"`: re-fit each consumer of removed nodes to reproduce
            the unpruned network's pre-activations on the calibration rows
            (`spectral.reconstruction.reconstruct`).
        recover: `{"x", "y", "epochs", "batch_size"}`: train the compact model briefly
            afterwards (`spectral.recovery.recover`); `y` may be left out with `distill`.
        distill: Recovery also trains on the unpruned model's outputs as soft targets.
        temperature: Distillation temperature, > 0.
        steps: Remove the nodes in this many rounds, with reconstruction and recovery after
            each (gradual pruning).

    Returns:
        A `PruningResult` (`model, report = prune(...)`).

    Raises:
        ValueError: On invalid arguments, a model without prunable Spectral layers, a
            missing metric, or nothing to compile the evaluation copy (or recovery) with;
            also calibration or recovery rows with the wrong width, no rows, NaN or infinite
            values, or labels whose row count differs from the inputs'.
        TypeError: If calibration or recovery rows are a dataset or generator, not numeric,
            or not structured like the model's inputs.

    Example:

    >>> model_small, report = prune(model, eval_dictionary={"x": x, "y": y},
    ...                             compare_metric="loss", max_delta_percent=5,
    ...                             calibration={"x": x_train[:2000]},
    ...                             reconstruct="least_squares")
    >>> report.to_dict()["nodes_removed_fraction"]
    """
    scope = check_scope(scope)
    min_units = check_min_units(min_units)
    if percentile is not None:
        percentile = check_percentile(percentile)
    else:
        step = _check_step(eval_dictionary, percentile_step)
    max_delta_percent = check_max_delta_percent(max_delta_percent)
    options = check_options(
        calibration=calibration,
        reconstruct=reconstruct,
        recover=recover,
        distill=distill,
        temperature=temperature,
        steps=steps,
        compact=compact,
    )
    options = check_data(options, model)
    if options.recovery is not None and compile_dictionary is None and not model.compiled:
        raise ValueError(
            "`recover` trains the pruned model and needs a loss: pass `compile_dictionary` or "
            "compile the model first. Received: compile_dictionary=None"
        )
    plain = options.exact and options.steps == 1
    notify(progress, 0.0, "analysing model")
    spectra = analyse(model)
    metric_before: float | None = None
    evaluations: list[dict[str, Any]] = []
    if percentile is None:
        assert eval_dictionary is not None
        method = "metric"
        masked = MaskedCopy(model)
        compile_model(masked.model, model, compile_dictionary, required=True)
        probe: Probe = masked
        if options.reconstruct is not None:
            probe = ReconstructedProbe(model, spectra, masked, options, compile_dictionary)
        outcome = search_percentile(
            probe,
            spectra,
            eval_dictionary,
            compare_metric,
            max_delta_percent,
            step,
            scope,
            min_units,
            progress if plain else scaled_progress(progress, 0.0, 0.5),
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
    notify(progress, 0.9 if plain else 0.5, f"pruning at percentile {percentile:g}")
    applied = apply_selection(
        model,
        spectra,
        keep,
        percentile,
        scope=scope,
        min_units=min_units,
        compact=compact,
        options=options,
        compile_dictionary=compile_dictionary,
        progress=None if plain else scaled_progress(progress, 0.5, 0.5),
    )
    new_model = applied.model
    # Recovery leaves the model compiled with the optimizer it trained with; keep that.
    compiled = bool(new_model.compiled) or compile_model(
        new_model, model, compile_dictionary, required=False
    )
    report = build_report(
        method,
        model,
        new_model,
        spectra,
        applied.keep,
        percentile,
        cutoff,
        scope,
        min_units,
        applied.masked_layers,
    )
    record_options(report, options, applied)
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
