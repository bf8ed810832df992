"""From a node selection to the returned model: compaction (or masking), then, as asked,
reconstruction on calibration rows and recovery training, in one round or in `steps` rounds.

Also the metric search's probe for reconstruction (`ReconstructedProbe`): with it the budget is
checked on the compacted, reconstructed model at each probed percentile instead of on the masked
model, which is what lets a search with reconstruction remove far more within the same budget.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from spectral.compaction import compact_model
from spectral.compiling import compile_model
from spectral.evaluation import evaluate, fits_one_batch
from spectral.graph import Planner
from spectral.masking import MaskedCopy, masked_model
from spectral.options import CompressionOptions
from spectral.plan import Plan
from spectral.reconstruction import ReconstructionResult, reconstruct
from spectral.recovery import recover
from spectral.report import PruningReport
from spectral.search import Progress, notify, scaled_progress
from spectral.selection import ModelSpectra, analyse, select_nodes

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


def prune_at(
    model: keras.Model,
    spectra: ModelSpectra,
    keep: Mapping[str, np.ndarray],
    compact: bool,
    *,
    warn: bool = True,
) -> tuple[keras.Model, list[str]]:
    """The model with only `keep` active: compacted (or masked); also the masked layers."""
    if not compact:
        return masked_model(model, keep), sorted(
            p for p in spectra.prunable if keep[p].size < spectra.by_path[p].units
        )
    plan, masked = plan_pruning(model, spectra, keep)
    for path, reason in masked.items() if warn else ():
        warnings.warn(
            f"Spectral layer '{path}' is masked instead of sliced: {reason} cannot be sliced "
            "safely.",
            stacklevel=4,
        )
    return compact_model(model, plan), sorted(masked)


@dataclass
class Applied:
    """The returned model and what it took.

    Args:
        model: The pruned model (compiled when recovery ran).
        keep: Prunable layer path -> its active nodes, as indices of the original's nodes.
        masked_layers: Layers kept at full size with their removed nodes zeroed.
        reconstruction: The last round's reconstruction, if any.
        recovery: The last round's recovery summary (`spectral.recovery.recover`), if any.
        rounds: One summary per round when `steps` > 1.
    """

    model: keras.Model
    keep: dict[str, np.ndarray]
    masked_layers: list[str]
    reconstruction: ReconstructionResult | None = None
    recovery: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)


def round_percentiles(percentile: float, steps: int) -> list[float]:
    """Per-round percentiles, each of the nodes left, that remove `percentile` % in `steps`.

    Round i removes up to the cumulative fraction `percentile * i / steps` of the original
    nodes; of the nodes still there that is `(f_i - f_{i-1}) / (1 - f_{i-1})`.
    """
    target = percentile / 100.0
    out, before = [], 0.0
    for i in range(1, steps + 1):
        after = target * i / steps
        out.append(100.0 * (after - before) / (1.0 - before) if before < 1.0 else 100.0)
        before = after
    return [min(100.0, max(0.0, q)) for q in out]


def limit_removal(
    spectra: ModelSpectra,
    keep: dict[str, np.ndarray],
    target: Mapping[str, int],
    removed: Mapping[str, int],
    share_done: float,
    scope: str,
) -> dict[str, np.ndarray]:
    """`keep` with removed nodes put back so a round does not overshoot the gradual schedule.

    A round's percentile removes at least one node whenever it is above 0 (the cutoff falls
    between the two smallest values), so many small rounds would remove far more than asked.
    After this round, at most `share_done` of `target` (path -> nodes the one-round selection
    removes) may be gone, counted over all layers (`"global"`) or per layer (`"layer"`);
    `removed` says how many already are. The largest |eigenvalues| are put back first.
    """
    keep = dict(keep)
    groups = [list(keep)] if scope == "global" else [[path] for path in keep]
    for paths in groups:
        allowed = round(sum(target[p] for p in paths) * share_done) - sum(removed[p] for p in paths)
        candidates = [
            (float(abs(spectra.by_path[p].eigenvalues[i])), p, int(i))
            for p in paths
            for i in np.setdiff1d(np.arange(spectra.by_path[p].units), keep[p])
        ]
        candidates.sort(key=lambda c: c[0])
        for _, path, index in candidates[max(allowed, 0) :]:
            keep[path] = np.sort(np.append(keep[path], index))
    return keep


def apply_selection(
    model: keras.Model,
    spectra: ModelSpectra,
    keep: dict[str, np.ndarray],
    percentile: float,
    *,
    scope: str,
    min_units: int,
    compact: bool,
    options: CompressionOptions,
    compile_dictionary: Mapping[str, Any] | None,
    progress: Progress | None = None,
) -> Applied:
    """Builds the pruned model for `keep` (chosen at `percentile`), as `options` ask."""
    if options.exact and options.steps == 1:
        new_model, masked = prune_at(model, spectra, keep, compact)
        return Applied(model=new_model, keep=keep, masked_layers=masked)
    index = {path: np.arange(layer.units) for path, layer in spectra.layers}
    current, current_spectra = model, spectra
    applied = Applied(model=model, keep=dict(keep), masked_layers=[])
    masked_all: set[str] = set()
    percentiles = round_percentiles(percentile, options.steps)
    target = {path: spectra.by_path[path].units - kept.size for path, kept in keep.items()}
    removed = dict.fromkeys(keep, 0)
    for step, share in enumerate(percentiles):
        if options.steps > 1:
            # Each round ranks the nodes left by the current eigenvalues (recovery moves them).
            current_spectra = current_spectra if step == 0 else analyse(current)
            keep, _ = select_nodes(current_spectra, share, scope, min_units)
            share_done = (step + 1) / options.steps
            keep = limit_removal(current_spectra, keep, target, removed, share_done, scope)
        notify(progress, step / len(percentiles), f"pruning, round {step + 1}/{len(percentiles)}")
        new_model, masked = prune_at(current, current_spectra, keep, compact=True)
        masked_all.update(masked)
        active = {path: index[path][kept] for path, kept in keep.items()}
        for path in keep:
            if path not in masked:  # a masked layer keeps all its nodes, and their indices
                index[path] = active[path]
        applied.keep = active
        removed = {path: spectra.by_path[path].units - active[path].size for path in active}
        round_progress = scaled_progress(progress, step / len(percentiles), 1 / len(percentiles))
        _refine(model, new_model, active, options, compile_dictionary, applied, round_progress)
        if options.steps > 1:
            applied.rounds.append(_round_summary(share, new_model, active, applied))
        current = new_model
    applied.model = current
    applied.masked_layers = sorted(masked_all)
    return applied


def _refine(
    original: keras.Model,
    pruned: keras.Model,
    active: dict[str, np.ndarray],
    options: CompressionOptions,
    compile_dictionary: Mapping[str, Any] | None,
    applied: Applied,
    progress: Progress | None,
) -> None:
    """Reconstruction then recovery of one round's compact model, in place."""
    training = options.recovery
    if options.reconstruct is not None:
        span = 0.3 if training is not None else 0.9
        applied.reconstruction = reconstruct(
            original,
            pruned,
            options.calibration_x,
            method=options.reconstruct,
            keep=active,
            progress=scaled_progress(progress, 0.1, span),
        )
    if training is not None:
        compile_model(pruned, original, compile_dictionary, required=True)
        extra = {} if training.batch_size is None else {"batch_size": training.batch_size}
        applied.recovery = recover(
            pruned,
            x=training.x,
            y=training.y,
            epochs=training.epochs,
            compile_dictionary=compile_dictionary,
            teacher=original if options.distill else None,
            distill=options.distill,
            temperature=options.temperature,
            progress=scaled_progress(progress, 0.4, 0.6),
            **extra,
        )


def _round_summary(
    share: float, pruned: keras.Model, active: dict[str, np.ndarray], applied: Applied
) -> dict[str, Any]:
    result = applied.reconstruction
    return {
        "percentile": float(share),
        "active_units": {path: int(kept.size) for path, kept in active.items()},
        "params": int(pruned.count_params()),
        "reconstruction_errors": {} if result is None else reconstruction_errors(result),
        "recovery_epochs": None if applied.recovery is None else int(applied.recovery["epochs"]),
    }


def reconstruction_errors(result: ReconstructionResult) -> dict[str, dict[str, float | None]]:
    """Layer path -> relative error `before` and `after` re-fitting, for re-fitted layers."""
    return {
        entry.layer: {"before": entry.error_before, "after": entry.error_after}
        for entry in result.layers
        if entry.status == "reconstructed"
    }


class ReconstructedProbe:
    """A metric-search probe that evaluates the compacted, reconstructed model at each point.

    It has `MaskedCopy`'s interface (`apply(keep)`, `evaluate(eval_dictionary)`). Percentile 0
    (`apply({})`) is the unpruned reference, evaluated on `reference`. Every other point costs
    a compaction, a reconstruction and a compile, so this is slower than masking; it is used
    only when the caller asks for reconstruction.

    Args:
        model: The unpruned model. Not modified.
        spectra: Its Spectral layers, from `selection.analyse`.
        reference: A compiled `MaskedCopy` of `model`.
        options: The run's options (`reconstruct` and `calibration_x` are used).
        compile_dictionary: Keyword arguments of `compile` for each probed model.
    """

    def __init__(
        self,
        model: keras.Model,
        spectra: ModelSpectra,
        reference: MaskedCopy,
        options: CompressionOptions,
        compile_dictionary: Mapping[str, Any] | None,
    ) -> None:
        self.model = model
        self.spectra = spectra
        self.reference = reference
        self.options = options
        self.compile_dictionary = compile_dictionary
        self.current: keras.Model = reference.model

    def apply(self, keep: Mapping[str, np.ndarray | None]) -> None:
        chosen = {path: kept for path, kept in keep.items() if kept is not None}
        if not chosen:
            self.reference.apply({})
            self.current = self.reference.model
            return
        # Probes stay quiet; the final pruning warns about masked layers once.
        pruned, _ = prune_at(self.model, self.spectra, chosen, compact=True, warn=False)
        assert self.options.reconstruct is not None
        reconstruct(
            self.model,
            pruned,
            self.options.calibration_x,
            method=self.options.reconstruct,
            keep=chosen,
        )
        compile_model(pruned, self.model, self.compile_dictionary, required=True)
        self.current = pruned

    def evaluate(self, eval_dictionary: Mapping[str, Any]) -> dict[str, float]:
        if self.current is not self.reference.model:
            # A probed model is evaluated once: on one batch, tracing the test step costs ten
            # times more than running it eagerly (0.6 s against 0.06 s on digits).
            self.current.run_eagerly = fits_one_batch(eval_dictionary)
        return evaluate(self.current, eval_dictionary)


def record_options(report: PruningReport, options: CompressionOptions, applied: Applied) -> None:
    """Records the compression options and what reconstruction and recovery did."""
    report.steps = options.steps
    report.rounds = applied.rounds
    if options.reconstruct is not None:
        report.reconstruction_method = options.reconstruct
        report.calibration_rows = options.calibration_rows
    if applied.reconstruction is not None:
        report.reconstruction_errors = reconstruction_errors(applied.reconstruction)
        report.reconstruction_fallbacks = applied.reconstruction.skipped
    if applied.recovery is not None:
        report.recovery_epochs = int(applied.recovery["epochs"])
        report.distill = options.distill
        report.temperature = options.temperature if options.distill else None
