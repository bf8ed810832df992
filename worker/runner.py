"""The domain function a pruning task calls: run one job from the `jobs` table to its end.

`execute_job` claims the job, loads the model version and dataset, runs `spectral.prune` or
`spectral.eigenvalue_pretraining`, measures the result (size, latency, metric), and stores it as
ONE new version of the same model through the registry (idempotent on the job id). It reports
progress to the job row, which is also how a client's cancel request reaches it.

TensorFlow, Keras and `spectral` are imported inside the functions: this module is only ever
imported in a pool child, after the fork.
"""

from __future__ import annotations

import io
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from service import jobs
from service.datasets import dataset_store, load_dataset
from service.settings import Settings
from worker.job_state import database, job_session

logger = logging.getLogger(__name__)

# Share of the job's progress given to the library's own steps.
_LIBRARY_START, _LIBRARY_END = 0.1, 0.85
_LATENCY_REPEATS = 5


class JobInputError(ValueError):
    """The job's inputs cannot work together (e.g. dataset shape vs model input)."""


def execute_job(job_id: str, settings: Settings) -> None:
    """Run job ``job_id``; every outcome, including failure, is written to its row."""
    with job_session(settings) as session:
        claim = jobs.claim_job(session, job_id, max_attempts=settings.job_max_attempts)
    if claim is None:
        return
    logger.info(
        "job %s attempt %d: %s on %s v%d",
        job_id,
        claim.attempt,
        claim.method,
        claim.model_id,
        claim.version,
    )
    heartbeat = _Heartbeat(settings, job_id)
    heartbeat.start()
    try:
        version, report = _run(claim, settings)
    except jobs.JobCancelled:
        with job_session(settings) as session:
            jobs.mark_cancelled(session, job_id)
        logger.info("job %s cancelled", job_id)
    except SoftTimeLimitExceeded:
        _fail(settings, job_id, f"Time limit of {settings.job_soft_time_limit_s} s exceeded")
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        _fail(settings, job_id, f"{type(exc).__name__}: {exc}")
    else:
        with job_session(settings) as session:
            jobs.mark_succeeded(session, job_id, result_version=version, report=report)
        logger.info("job %s succeeded: %s v%d", job_id, claim.model_id, version)
    finally:
        heartbeat.stop()


def _fail(settings: Settings, job_id: str, error: str) -> None:
    with job_session(settings) as session:
        jobs.mark_failed(session, job_id, error)


class _Heartbeat:
    """Keeps the job's lease fresh while a long library step (e.g. ``fit``) runs."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        self._settings = settings
        self._job_id = job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self._settings.job_heartbeat_s):
            try:
                with job_session(self._settings) as session:
                    jobs.heartbeat(session, self._job_id)
            except Exception:
                logger.exception("heartbeat of job %s failed", self._job_id)


class _Progress:
    """The library's ``progress`` callback: records progress, raises when cancel was asked."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        self._settings = settings
        self._job_id = job_id

    def step(self, fraction: float, message: str) -> None:
        with job_session(self._settings) as session:
            cancel = jobs.record_progress(session, self._job_id, fraction, message)
        if cancel:
            raise jobs.JobCancelled(self._job_id)

    def check_cancel(self, message: str) -> None:
        with job_session(self._settings) as session:
            jobs.heartbeat(session, self._job_id)
            cancel = jobs.is_cancel_requested(session, self._job_id)
        if cancel:
            raise jobs.JobCancelled(f"{self._job_id} ({message})")

    def library(self, fraction: float, message: str) -> None:
        span = _LIBRARY_END - _LIBRARY_START
        self.step(_LIBRARY_START + span * max(0.0, min(1.0, fraction)), message)


def _run(claim: jobs.Claim, settings: Settings) -> tuple[int, dict[str, Any]]:
    import keras

    import spectral
    from service.model_loading import load_model_bytes
    from service.registry import Registry

    progress = _Progress(settings, claim.job_id)
    progress.step(0.02, "loading model")
    registry = Registry.from_settings(settings, database(settings))
    record = registry.resolve(claim.model_id, claim.version)
    artifact = registry.read_artifact(record)  # checksum verified; read once for both uses
    model = load_model_bytes(artifact)
    params = claim.params
    batch_size = int(params.get("batch_size", 32))

    x = y = None
    if claim.dataset_id is not None:
        progress.step(0.05, "loading dataset")
        with job_session(settings) as session:
            x, y = load_dataset(session, dataset_store(settings), claim.dataset_id)
        _check_dataset_fits(model, x)

    compile_kwargs = params.get("compile") or jobs.artifact_compile_config(artifact)
    if claim.method in ("metric", "pretrain") and compile_kwargs is None:
        raise JobInputError(
            "This model artifact has no compile config; pass `compile` (e.g. "
            '{"optimizer": "adam", "loss": "sparse_categorical_crossentropy", '
            '"metrics": ["accuracy"]})'
        )
    eval_dictionary = None
    if x is not None and compile_kwargs is not None:
        eval_dictionary = {"x": x, "y": y, "batch_size": batch_size, "verbose": 0}

    latency_batch = _latency_batch(model, x, batch_size)
    latency_before = _latency_ms(model, latency_batch)
    search = {
        "compare_metric": params.get("compare_metric", "accuracy"),
        "higher_is_better": params.get("higher_is_better"),
        "max_delta_percent": params.get("max_delta_percent", 10.0),
        "percentile_step": params.get("percentile_step", 5.0),
    }
    common = {
        "scope": params.get("scope", "global"),
        "min_units": params.get("min_units", 1),
        "progress": progress.library,
    }
    progress.step(_LIBRARY_START, f"{claim.method} pruning")
    if claim.method == "pretrain":
        epochs = int(params.get("epochs", 5))
        fit_kwargs = {
            "x": x,
            "y": y,
            "epochs": epochs,
            "batch_size": batch_size,
            "verbose": 0,
            "callbacks": [_cancel_callback(progress)],
        }
        fine_tune = {**fit_kwargs, "epochs": int(params.get("fine_tune_epochs") or epochs)}
        result = spectral.eigenvalue_pretraining(
            model,
            fit_kwargs,
            compile_dictionary=compile_kwargs,
            percentile=params.get("percentile"),
            eval_dictionary=eval_dictionary,
            fine_tune_kwargs=fine_tune,
            eigenvalues_only=bool(params.get("eigenvalues_only", False)),
            **search,
            **common,
        )
    elif claim.method == "metric":
        result = spectral.prune(
            model,
            eval_dictionary=eval_dictionary,
            compile_dictionary=compile_kwargs,
            **search,
            **common,
        )
    else:
        result = spectral.prune(
            model,
            percentile=float(params["percentile"]),
            eval_dictionary=eval_dictionary,
            compile_dictionary=compile_kwargs,
            compare_metric=search["compare_metric"],
            higher_is_better=search["higher_is_better"],
            **common,
        )
    pruned = result.model

    progress.step(_LIBRARY_END, "measuring the pruned model")
    latency_after = _latency_ms(pruned, latency_batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pruned.keras"
        pruned.save(path)
        data = path.read_bytes()
    png = _report_png(spectral, result.report)
    report = {
        **result.report.to_dict(),
        "artifact_bytes_before": record.size_bytes,
        "artifact_bytes_after": len(data),
        "latency_ms_before": latency_before,
        "latency_ms_after": latency_after,
        "latency_batch_size": int(latency_batch.shape[0]),
        "keras_backend": keras.backend.backend(),
        "job_id": claim.job_id,
        "attempt": claim.attempt,
    }

    progress.step(0.95, "storing the new version")
    new = registry.add_version(
        claim.model_id,
        data,
        parent_version=record.version,
        lineage={"job_id": claim.job_id, "method": claim.method, "params": params},
        job_id=claim.job_id,
        report=report,
        report_png=png,
    )
    return new.version, report


def _check_dataset_fits(model: Any, x: np.ndarray) -> None:
    expected = tuple(model.inputs[0].shape[1:])
    received = tuple(x.shape[1:])
    if len(expected) != len(received) or any(
        e is not None and e != r for e, r in zip(expected, received, strict=False)
    ):
        raise JobInputError(
            f"Dataset x has samples of shape {list(received)} but the model expects "
            f"{[d for d in expected]}"
        )


def _latency_batch(model: Any, x: np.ndarray | None, batch_size: int) -> np.ndarray:
    if x is not None:
        return np.asarray(x[:batch_size])
    shape = [batch_size] + [d or 1 for d in model.inputs[0].shape[1:]]
    return np.random.default_rng(0).standard_normal(shape).astype("float32")


def _latency_ms(model: Any, batch: np.ndarray) -> float:
    """Median wall time of one batch prediction, after a warm-up call."""
    model.predict_on_batch(batch)
    timings = []
    for _ in range(_LATENCY_REPEATS):
        start = time.perf_counter()
        model.predict_on_batch(batch)
        timings.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(timings), 4)


def _cancel_callback(progress: _Progress) -> Any:
    """A Keras callback that lets a cancel request stop ``fit`` between epochs."""
    import keras

    class CancelBetweenEpochs(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            progress.check_cancel(f"epoch {epoch + 1}")

    return CancelBetweenEpochs()


def _report_png(spectral: Any, report: Any) -> bytes:
    """The eigenvalue plot, with the metric curve under it when a search ran."""
    eigen_png = spectral.plot_eigenvalues(report)
    if not report.evaluations:
        return bytes(eigen_png)
    curve_png = spectral.plot_metric_curve(report)
    return _stack_pngs([eigen_png, curve_png])


def _stack_pngs(images: list[bytes]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    arrays = [mpimg.imread(io.BytesIO(image), format="png") for image in images]
    width = max(array.shape[1] for array in arrays)
    padded = []
    for array in arrays:
        rgba = array if array.shape[2] == 4 else np.dstack([array, np.ones(array.shape[:2])])
        pad = np.ones((rgba.shape[0], width - rgba.shape[1], 4), dtype=rgba.dtype)
        padded.append(np.concatenate([rgba, pad], axis=1))
    buffer = io.BytesIO()
    mpimg.imsave(buffer, np.concatenate(padded, axis=0), format="png")
    return buffer.getvalue()
