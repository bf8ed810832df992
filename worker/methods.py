"""The pruning methods a job can run, in one table: ``METHODS[params.method](...)``.

Each entry turns the job's typed `PruneParams` and loaded inputs into one library call and
returns its `spectral.PruningResult`. Defaults come from `PruneParams` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import spectral
from service.jobs.params import Method, PruneParams
from service.versions import VersionRecord
from worker.progress import JobProgress


@dataclass(frozen=True)
class JobInputs:
    """What a job works on: the model version, its loaded model, the dataset and how to compile."""

    record: VersionRecord
    model: Any
    x: np.ndarray | None
    y: np.ndarray | None
    compile_kwargs: dict[str, Any] | None
    batch_size: int

    @property
    def eval_dictionary(self) -> dict[str, Any] | None:
        """``model.evaluate`` kwargs on the dataset, when there is one to evaluate."""
        if self.x is None or self.compile_kwargs is None:
            return None
        return {"x": self.x, "y": self.y, "batch_size": self.batch_size, "verbose": 0}

    def fit_kwargs(self, epochs: int, progress: JobProgress) -> dict[str, Any]:
        """``model.fit`` kwargs on the dataset; cancellable between epochs."""
        return {
            "x": self.x,
            "y": self.y,
            "epochs": epochs,
            "batch_size": self.batch_size,
            "verbose": 0,
            "callbacks": [progress.epoch_callback()],
        }


def _common(params: PruneParams, progress: JobProgress) -> dict[str, Any]:
    return {"scope": params.scope, "min_units": params.min_units, "progress": progress.library}


def _search(params: PruneParams) -> dict[str, Any]:
    return {
        "compare_metric": params.compare_metric,
        "higher_is_better": params.higher_is_better,
        "max_delta_percent": params.max_delta_percent,
        "percentile_step": params.percentile_step,
    }


def prune_percentile(
    inputs: JobInputs, params: PruneParams, progress: JobProgress
) -> spectral.PruningResult:
    return spectral.prune(
        inputs.model,
        percentile=params.percentile,
        eval_dictionary=inputs.eval_dictionary,
        compile_dictionary=inputs.compile_kwargs,
        compare_metric=params.compare_metric,
        higher_is_better=params.higher_is_better,
        **_common(params, progress),
    )


def prune_metric(
    inputs: JobInputs, params: PruneParams, progress: JobProgress
) -> spectral.PruningResult:
    return spectral.prune(
        inputs.model,
        eval_dictionary=inputs.eval_dictionary,
        compile_dictionary=inputs.compile_kwargs,
        **_search(params),
        **_common(params, progress),
    )


def pretrain(
    inputs: JobInputs, params: PruneParams, progress: JobProgress
) -> spectral.PruningResult:
    fine_tune_epochs = params.fine_tune_epochs or params.epochs
    return spectral.eigenvalue_pretraining(
        inputs.model,
        inputs.fit_kwargs(params.epochs, progress),
        compile_dictionary=inputs.compile_kwargs,
        percentile=params.percentile,
        eval_dictionary=inputs.eval_dictionary,
        fine_tune_kwargs=inputs.fit_kwargs(fine_tune_epochs, progress),
        eigenvalues_only=params.eigenvalues_only,
        **_search(params),
        **_common(params, progress),
    )


PruningMethod = Callable[[JobInputs, PruneParams, JobProgress], spectral.PruningResult]

METHODS: dict[Method, PruningMethod] = {
    "percentile": prune_percentile,
    "metric": prune_metric,
    "pretrain": pretrain,
}
