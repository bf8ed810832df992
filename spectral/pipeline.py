"""Eigenvalue pretraining: train eigenvalues only, prune, then fine-tune the compact model."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import keras

from spectral.compaction import copy_model
from spectral.compiling import compile_model
from spectral.evaluation import evaluate
from spectral.graph import spectral_layers
from spectral.options import check_data, check_options
from spectral.pruning import prune
from spectral.report import PruningResult
from spectral.search import Progress, notify, scaled_progress

logger = logging.getLogger(__name__)


def eigenvalue_pretraining(
    model: keras.Model,
    fit_kwargs: Mapping[str, Any],
    *,
    compile_dictionary: Mapping[str, Any] | None = None,
    percentile: float | None = None,
    eval_dictionary: Mapping[str, Any] | None = None,
    compare_metric: str = "accuracy",
    max_delta_percent: float = 10.0,
    percentile_step: float = 5.0,
    fine_tune_kwargs: Mapping[str, Any] | None = None,
    scope: str = "layer",
    min_units: int = 1,
    progress: Progress | None = None,
    higher_is_better: bool | None = None,
    eigenvalues_only: bool = False,
    calibration: Mapping[str, Any] | None = None,
    reconstruct: str | None = None,
    recover: Mapping[str, Any] | None = None,
    distill: bool = False,
    temperature: float = 2.0,
    steps: int = 1,
) -> PruningResult:
    """Runs the spectral pretraining pipeline on a copy of `model`.

    1. Freezes every Spectral layer's `base` and trains with `fit(**fit_kwargs)`, so the
       Spectral layers learn their eigenvalues (and biases) only; non-Spectral layers, such as
       a Dense head, keep training.
    2. Prunes by `percentile`, or by the metric-based search when `percentile` is `None`,
       with `prune`'s compression options: reconstruction on calibration rows re-fits the
       compact model, recovery (optionally distilled from the pretrained, unpruned model of
       phase 1) trains it briefly, `steps` spreads the removal over rounds.
    3. Trains the compact model with `fit(**(fine_tune_kwargs or fit_kwargs))`.

    Args:
        model: A built Sequential or Functional model with Spectral layers. Not modified.
        fit_kwargs: Keyword arguments of `model.fit` for the eigenvalue phase.
        compile_dictionary: Keyword arguments of `model.compile`; defaults to the model's
            own compile configuration.
        percentile: Percentile to prune at; `None` searches with `eval_dictionary`.
        eval_dictionary: Keyword arguments of `model.evaluate`.
        compare_metric: Metric compared by the search and reported.
        max_delta_percent: Allowed relative worsening, in percent.
        percentile_step: Spacing of the searched percentile grid.
        fine_tune_kwargs: Keyword arguments of `fit` for the last phase.
        scope: `"layer"` (the default here: one cutoff per layer) or `"global"`. After
            eigenvalue training a global cutoff can take nearly every node of a layer whose
            eigenvalues run smaller (on digits at 90 % removed it kept 40 / 10 nodes and lost
            1.3 accuracy points; per layer kept 20 / 30 and lost 0.7, see bench/quality.py).
        min_units: Nodes always kept per layer.
        progress: Optional `progress(fraction, message)`; its exceptions propagate.
        higher_is_better: Direction of `compare_metric`; `None` infers it from the name.
        eigenvalues_only: In phase 1, train the Spectral eigenvalues and nothing else
            (Spectral biases and non-Spectral layers frozen too). The default freezes only
            `base`, so that a randomly initialised head can learn alongside the eigenvalues.
        calibration, reconstruct, recover, distill, temperature, steps: The compression
            options of `prune`, applied in phase 2 to the pretrained model, which is also
            the teacher of `distill`. They are validated before phase 1 trains, and the
            report records them as `prune`'s does.

    Returns:
        A `PruningResult` whose report has `method="pretrain"`; `metric_after` is measured
        after fine-tuning when `eval_dictionary` is given.

    Raises:
        ValueError: As `prune` (including the compression options and their rows), or when
            there is nothing to compile the model with.
        TypeError: On calibration or recovery rows that are not arrays (see `prune`).

    Example:

    >>> model_small, report = eigenvalue_pretraining(
    ...     model, {"x": x, "y": y, "epochs": 5}, percentile=50,
    ...     compile_dictionary={"optimizer": "adam", "loss": "mse"},
    ...     calibration={"x": x[:2000]}, reconstruct="least_squares")
    """
    compression: dict[str, Any] = {
        "calibration": calibration,
        "reconstruct": reconstruct,
        "recover": recover,
        "distill": distill,
        "temperature": temperature,
        "steps": steps,
    }
    # Fail before the (long) eigenvalue phase, not after it.
    check_data(check_options(**compression), model)
    notify(progress, 0.0, "eigenvalue training")
    working = copy_model(model)
    layers = spectral_layers(working)
    if not layers:
        raise ValueError(f"The model has no Spectral layers to prune. Received: model={model.name}")
    if eigenvalues_only:
        eigenvalues = {id(v) for _, layer in layers for v in (layer.diag_start, layer.diag_end)}
        frozen = [v for v in working.trainable_weights if id(v) not in eigenvalues]
    else:
        frozen = [layer.base for _, layer in layers if layer.base.trainable]
    for variable in frozen:
        variable.trainable = False
    # Trainability changes only take effect in a freshly compiled train function.
    compile_model(working, model, compile_dictionary, required=True)
    working.fit(**{"verbose": 0, **dict(fit_kwargs)})
    for variable in frozen:
        variable.trainable = True
    notify(progress, 0.4, "pruning")
    result = prune(
        working,
        percentile=percentile,
        eval_dictionary=eval_dictionary,
        compile_dictionary=compile_dictionary,
        compare_metric=compare_metric,
        max_delta_percent=max_delta_percent,
        percentile_step=percentile_step,
        scope=scope,
        min_units=min_units,
        progress=scaled_progress(progress, 0.4, 0.4),
        higher_is_better=higher_is_better,
        **compression,
    )
    pruned, report = result.model, result.report
    compile_model(pruned, working, compile_dictionary, required=True)
    notify(progress, 0.8, "fine-tuning the compact model")
    pruned.fit(**{"verbose": 0, **dict(fine_tune_kwargs or fit_kwargs)})
    report.method = "pretrain"
    report.params_before = int(model.count_params())
    if eval_dictionary is not None:
        results = evaluate(pruned, eval_dictionary)
        if compare_metric in results:
            report.metric_name = compare_metric
            report.metric_after = float(results[compare_metric])
    logger.info("Pretraining pipeline done: %s", report.units_after)
    notify(progress, 1.0, "done")
    return PruningResult(model=pruned, report=report)
