"""Running one pruning job from the `jobs` table to its end: `execute_job`.

A job claims its row, then goes through four steps, each a function here: load the inputs,
run the method (the `METHODS` table: percentile, metric, pretrain), measure the result (and,
with ``promote``, run the promotion gate), and save it as ONE new version of the same model
through the registry (idempotent on the job id), moving the alias in that same transaction
when the gate passed.
Progress goes to the job's row, which is also how a client's cancel request reaches the job.
A worker shutting down asks for the job back at the same step boundaries (`worker.shutdown`).
Every parameter arrives typed, with its default, as `PruneParams`.

This module imports TensorFlow (through `spectral`): only a pool child imports it, after the
fork (see `worker.tasks`).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

import spectral
from service.datasets import dataset_store, load_dataset
from service.db import is_transient_db_error
from service.errors import ArtifactStoreUnavailable, JobCancelled, JobInputError
from service.jobs import state
from service.jobs.params import Method, PromoteSpec, PruneParams
from service.jobs.promotion import PromotionDecision, decide
from service.jobs.submission import Enqueue
from service.jobs.table import Job
from service.model_loading import load_model_bytes
from service.registry import Registry
from service.settings import Settings
from service.versions import VersionRecord
from spectral.compiling import compile_model
from spectral.evaluation import evaluate
from spectral.search import lower_is_better, pick_metric
from worker.progress import LIBRARY_END, LIBRARY_START, Heartbeat, JobProgress
from worker.sessions import database, fail_job, in_transaction, job_session
from worker.shutdown import JobReleased, release_requested

logger = logging.getLogger(__name__)

_LATENCY_REPEATS = 5
_TRANSIENT_MAX_BACKOFF_S = 30.0


def execute_job(job_id: str, settings: Settings, enqueue: Enqueue | None = None) -> None:
    """Run job ``job_id``; every outcome, including failure, is written to its row.

    A job released by a worker shutting down goes back to ``queued`` and its message is sent
    again through ``enqueue(job_id, queue)``, so another worker starts it at once.
    """
    if release_requested():
        # This worker is shutting down: leave the job queued for the next one, unclaimed.
        _send_again(job_id, settings, enqueue)
        return
    claim = in_transaction(
        settings,
        lambda session: state.claim_job(session, job_id, max_attempts=settings.job_max_attempts),
    )
    if claim is None:
        return
    logger.info(
        "job %s attempt %d: %s on %s v%d",
        job_id,
        claim.attempt,
        claim.params.method,
        claim.model_id,
        claim.version,
    )
    try:
        with Heartbeat(settings, job_id):
            version, report = run_retrying(claim, settings)
    except JobCancelled:
        in_transaction(settings, lambda session: state.mark_cancelled(session, job_id))
        logger.info("job %s cancelled", job_id)
    except JobReleased:
        release(claim, settings, enqueue)
    except SoftTimeLimitExceeded:
        fail_job(settings, job_id, f"Time limit of {settings.job_soft_time_limit_s} s exceeded")
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        fail_job(settings, job_id, f"{type(exc).__name__}: {exc}")
    else:
        in_transaction(
            settings,
            lambda session: state.mark_succeeded(
                session, job_id, result_version=version, report=report
            ),
        )
        logger.info("job %s succeeded: %s v%d", job_id, claim.model_id, version)


def is_transient(exc: BaseException) -> bool:
    """A fault of the job's surroundings that may clear by itself: the artifact store or the
    database could not be reached. Re-running the job then is the same job, not a new attempt."""
    return isinstance(exc, ArtifactStoreUnavailable) or is_transient_db_error(exc)


def run_retrying(claim: state.Claim, settings: Settings) -> tuple[int, dict[str, Any]]:
    """`run_job`, run again after a transient fault, with backoff, up to
    ``settings.job_transient_retries`` times; the attempt is not counted again.

    Re-running is safe: saving is idempotent on the job id, so a fault after the new version was
    recorded gets that version back. The heartbeat goes on meanwhile, so the job keeps its lease.
    """
    for retry in range(settings.job_transient_retries + 1):
        try:
            return run_job(claim, settings)
        except Exception as exc:
            if not is_transient(exc) or retry == settings.job_transient_retries:
                raise
            delay = min(settings.job_transient_backoff_s * 2**retry, _TRANSIENT_MAX_BACKOFF_S)
            logger.warning(
                "job %s attempt %d: transient fault (%s: %s); running it again in %.1f s "
                "(retry %d of %d)",
                claim.job_id,
                claim.attempt,
                type(exc).__name__,
                exc,
                delay,
                retry + 1,
                settings.job_transient_retries,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def _send_again(job_id: str, settings: Settings, enqueue: Enqueue | None) -> None:
    with job_session(settings) as session:
        job = session.get(Job, job_id)
        queue = job.queue if job is not None and job.status == "queued" else None
    if queue is not None and enqueue is not None:
        enqueue(job_id, queue)


def release(claim: state.Claim, settings: Settings, enqueue: Enqueue | None) -> None:
    """Hand a claimed job back to the queue (its attempt not counted) and send its message."""
    with job_session(settings) as session:
        released = state.release_job(session, claim.job_id, attempt=claim.attempt)
    if not released:
        logger.info(
            "job %s not released: it was cancelled or is no longer this attempt", claim.job_id
        )
        return
    _send_again(claim.job_id, settings, enqueue)
    logger.warning(
        "job %s attempt %d released: its worker is shutting down", claim.job_id, claim.attempt
    )


def run_job(claim: state.Claim, settings: Settings) -> tuple[int, dict[str, Any]]:
    """The steps of one claimed job; returns the new version and its report."""
    progress = JobProgress(settings, claim.job_id)
    registry = Registry.from_settings(settings, database(settings))
    inputs = load_inputs(claim, registry, settings, progress)
    latency_batch = _latency_batch(inputs)
    latency_before = latency_ms(inputs.model, latency_batch)

    progress.step(LIBRARY_START, f"{claim.params.method} pruning")
    result = METHODS[claim.params.method](inputs, claim.params, progress)

    progress.step(LIBRARY_END, "measuring the pruned model")
    data = _keras_bytes(result.model)
    report = {
        **result.report.to_dict(),
        **measure(inputs, result.model, data, latency_batch, latency_before),
        # Which uploads calibrated and retrained it; the library reports the rest.
        "calibration_dataset": claim.params.calibration_dataset,
        "recover_dataset": claim.params.recover_dataset,
        "job_id": claim.job_id,
        "attempt": claim.attempt,
    }

    promote = claim.params.promote
    promote_alias = None
    if promote is not None:
        progress.step(0.93, f"promotion gate: {promote.metric} before and after")
        decision = promotion_gate(promote, claim.params, inputs, registry, report, data)
        report["promotion"] = decision.to_dict()
        promote_alias = promote.alias if decision.promoted else None

    progress.step(0.95, "storing the new version")
    record = save(claim, registry, inputs.record, data, result, report, promote_alias=promote_alias)
    if promote is not None and record.report is not None:
        # A retried job gets the version (and alias move) of its earlier attempt back: the
        # gate that attempt ran is the one that counted.
        report["promotion"] = record.report.get("promotion", report["promotion"])
    return record.version, report


# -- step 1: the inputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobInputs:
    """What a job works on: the model version and its model, how to compile it, and the arrays
    of the job's dataset, calibration dataset and recovery dataset (each None when unused)."""

    record: VersionRecord
    model: Any
    compile_kwargs: dict[str, Any] | None
    batch_size: int
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    calibration_x: np.ndarray | None = None
    recover_x: np.ndarray | None = None
    recover_y: np.ndarray | None = None

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


def load_inputs(
    claim: state.Claim, registry: Registry, settings: Settings, progress: JobProgress
) -> JobInputs:
    """The model version, its model, its compile kwargs, and every dataset the job reads
    (each loaded once and checked against the model's input)."""
    params = claim.params
    progress.step(0.02, "loading model")
    record = registry.resolve(claim.model_id, claim.version)
    compile_kwargs = params.compile_for(
        record.compile_config, f"Model {record.model_id!r} version {record.version}"
    )
    model = load_model_bytes(registry.read_artifact(record))
    arrays: dict[str | None, tuple[Any, Any]] = {None: (None, None)}
    for dataset_id in params.dataset_ids:
        progress.step(0.05, f"loading dataset {dataset_id}")
        with job_session(settings) as session:
            arrays[dataset_id] = load_dataset(session, dataset_store(settings), dataset_id)
        _check_fits(model, arrays[dataset_id][0])
    x, y = arrays[params.dataset_id]
    recover_x, recover_y = arrays[params.recover_dataset]
    return JobInputs(
        record,
        model,
        compile_kwargs,
        params.batch_size,
        x=x,
        y=y,
        calibration_x=arrays[params.calibration_dataset][0],
        recover_x=recover_x,
        recover_y=recover_y,
    )


def _check_fits(model: Any, x: np.ndarray) -> None:
    expected = tuple(model.inputs[0].shape[1:])
    received = tuple(x.shape[1:])
    if len(expected) != len(received) or any(
        e is not None and e != r for e, r in zip(expected, received, strict=False)
    ):
        raise JobInputError(
            f"Dataset x has samples of shape {list(received)} but the model expects "
            f"{list(expected)}"
        )


# -- step 2: the methods, one table ---------------------------------------------------------------


def _common(params: PruneParams, progress: JobProgress) -> dict[str, Any]:
    return {"scope": params.scope, "min_units": params.min_units, "progress": progress.library}


def _compression(inputs: JobInputs, params: PruneParams) -> dict[str, Any]:
    """The reconstruction, recovery and gradual options of `spectral.prune` (and of
    `spectral.eigenvalue_pretraining`'s pruning step), where the job sets them.

    The library reports progress per reconstructed layer and per recovery epoch through
    ``progress``, and a cancel request raised there stops recovery between epochs.
    """
    options: dict[str, Any] = {}
    if params.reconstruct is not None:
        options["reconstruct"] = params.reconstruct
        options["calibration"] = {"x": inputs.calibration_x}
    if params.recover_epochs is not None:
        options["recover"] = {
            "x": inputs.recover_x,
            "y": inputs.recover_y,
            "epochs": params.recover_epochs,
            "batch_size": inputs.batch_size,
        }
        options["distill"] = params.distill
        if params.distill:
            options["temperature"] = params.temperature
    if params.steps > 1:
        options["steps"] = params.steps
    return options


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
        **_compression(inputs, params),
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
        **_compression(inputs, params),
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
        **_compression(inputs, params),
        **_common(params, progress),
    )


PruningMethod = Callable[[JobInputs, PruneParams, JobProgress], spectral.PruningResult]

METHODS: dict[Method, PruningMethod] = {
    "percentile": prune_percentile,
    "metric": prune_metric,
    "pretrain": pretrain,
}


# -- step 3: measurement --------------------------------------------------------------------------


def measure(
    inputs: JobInputs, pruned: Any, data: bytes, batch: np.ndarray, latency_before: float
) -> dict[str, Any]:
    """Size and latency of the pruned model against the original, for the report."""
    return {
        "artifact_bytes_before": inputs.record.size_bytes,
        "artifact_bytes_after": len(data),
        "latency_ms_before": latency_before,
        "latency_ms_after": latency_ms(pruned, batch),
        "latency_batch_size": int(batch.shape[0]),
        "keras_backend": keras.backend.backend(),
    }


def _latency_batch(inputs: JobInputs) -> np.ndarray:
    if inputs.x is not None:
        return np.asarray(inputs.x[: inputs.batch_size])
    shape = [inputs.batch_size] + [d or 1 for d in inputs.model.inputs[0].shape[1:]]
    return np.random.default_rng(0).standard_normal(shape).astype("float32")


def latency_ms(model: Any, batch: np.ndarray) -> float:
    """Median wall time of one batch prediction, after a warm-up call."""
    model.predict_on_batch(batch)
    timings = []
    for _ in range(_LATENCY_REPEATS):
        start = time.perf_counter()
        model.predict_on_batch(batch)
        timings.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(timings), 4)


def _keras_bytes(model: Any) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pruned.keras"
        model.save(path)
        return path.read_bytes()


# -- step 3b: the promotion gate ------------------------------------------------------------------


def promotion_gate(
    promote: PromoteSpec,
    params: PruneParams,
    inputs: JobInputs,
    registry: Registry,
    report: dict[str, Any],
    data: bytes,
) -> PromotionDecision:
    """Compares ``promote.metric`` of the parent and the new version on the job's dataset.

    Reuses the report's before/after when the library measured that metric of those two models
    (percentile and metric methods; pretrain's "before" is the pretrained model, not the
    parent), else evaluates both stored artifacts afresh.
    """
    if promote.metric == params.compare_metric and params.higher_is_better is not None:
        lower = not params.higher_is_better
    else:
        lower = lower_is_better(promote.metric)
    before, after = report.get("metric_before"), report.get("metric_after")
    if params.method == "pretrain" or report.get("metric_name") != promote.metric:
        before = after = None
    if before is None or after is None:
        try:
            before = _metric_of(registry.read_artifact(inputs.record), inputs, promote.metric)
            after = _metric_of(data, inputs, promote.metric)
        except ValueError as exc:  # the metric is not among the evaluation results
            return decide(promote, None, None, lower_is_better=lower, unmeasured=str(exc))
    return decide(promote, before, after, lower_is_better=lower)


def _metric_of(artifact: bytes, inputs: JobInputs, metric: str) -> float:
    """``metric`` of a stored artifact on the job's dataset, compiled as the job compiles."""
    model = load_model_bytes(artifact)
    compile_model(model, model, inputs.compile_kwargs, required=True)
    assert inputs.eval_dictionary is not None  # submission requires a dataset with promote
    return pick_metric(evaluate(model, inputs.eval_dictionary), metric)


# -- step 4: saving the new version ---------------------------------------------------------------


def save(
    claim: state.Claim,
    registry: Registry,
    parent: VersionRecord,
    data: bytes,
    result: spectral.PruningResult,
    report: dict[str, Any],
    *,
    promote_alias: str | None = None,
) -> VersionRecord:
    """Store the pruned model as the next version, with its lineage, report and report image,
    and point ``promote_alias`` at it in the same transaction (the gate passed)."""
    params = claim.params.recorded()
    # The gate decided whether to move an alias; it is not how the version was made.
    params.pop("promote", None)
    return registry.add_version(
        claim.model_id,
        data,
        parent_version=parent.version,
        lineage={
            "job_id": claim.job_id,
            "method": claim.params.method,
            "params": params,
        },
        job_id=claim.job_id,
        report=report,
        report_png=spectral.plot_report(result.report),
        promote_alias=promote_alias,
    )
