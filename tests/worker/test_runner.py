"""`execute_job`, called directly (no broker): real registry, real models, real datasets."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

import spectral
from service.datasets import create_dataset, dataset_store
from service.db import Database, upgrade_database
from service.errors import CompileConfigMissing
from service.jobs import state, submission
from service.jobs.params import PruneRequest
from service.jobs.table import Job, get_job
from service.registry import Registry
from service.settings import Settings
from tests.support.digits import build_digits_model, digits, digits_npz, keras_bytes, npz_bytes
from worker.runner import execute_job

# Runs a second time in CI with the artifacts in S3 (scripts/test).
pytestmark = pytest.mark.artifact_store


@pytest.fixture
def env(tmp_path: Path, model_bytes: bytes) -> tuple[Settings, Registry]:
    settings = Settings(data_dir=tmp_path, job_heartbeat_s=0.2)
    upgrade_database(settings)
    registry = Registry.from_settings(settings, Database(settings))
    registry.create_model("digits", model_bytes)
    return settings, registry


def _submit(settings: Settings, registry: Registry, **body: object) -> str:
    sent: list[tuple[str, str]] = []
    request = PruneRequest.model_validate({"model_id": "digits", **body})
    new = submission.submit_job(
        registry, request, settings=settings, enqueue=lambda j, q: sent.append((j, q))
    )
    assert sent == [(new.job.id, "spectral")]
    return new.job.id


def _dataset(settings: Settings, registry: Registry, data: bytes) -> str:
    with registry.database.session() as session:
        dataset, _ = create_dataset(
            session, dataset_store(settings), data, max_bytes=settings.max_dataset_bytes
        )
    return dataset.id


def _job(registry: Registry, job_id: str) -> Job:
    with registry.database.session() as session:
        return get_job(session, job_id)


def test_percentile_job_makes_one_version_equal_to_the_library(
    env: tuple[Settings, Registry], tmp_path: Path
) -> None:
    settings, registry = env
    job_id = _submit(settings, registry, method="percentile", percentile=40)
    execute_job(job_id, settings)
    job = _job(registry, job_id)
    assert job.status == "succeeded", job.error
    assert job.result_version == 2 and job.attempts == 1
    record = registry.resolve("digits", 2)
    assert record.parent_version == 1 and record.job_id == job_id
    assert record.lineage == {"job_id": job_id, "method": "percentile", "params": job.params}
    report = record.report
    assert report is not None and report == job.report
    assert sum(report["units_after"].values()) < sum(report["units_before"].values())
    assert report["params_after"] < report["params_before"]
    assert report["artifact_bytes_before"] == registry.resolve("digits", 1).size_bytes
    assert report["artifact_bytes_after"] == record.size_bytes
    assert report["latency_ms_before"] > 0 and report["latency_ms_after"] > 0
    assert report["metric_before"] is None  # no dataset given
    # The stored image is the library's plot of this very report (eigenvalues only: no search).
    assert registry.read_report_png(record) == spectral.plot_report(report)

    original = registry.load_keras_model(registry.resolve("digits", 1))
    expected = spectral.prune_percentile(original, 40)
    x = np.random.default_rng(1).random((16, 64)).astype("float32")
    np.testing.assert_allclose(
        registry.load_keras_model(record).predict(x, verbose=0),
        expected.predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )

    execute_job(job_id, settings)  # a duplicate delivery changes nothing
    assert [v.version for v in registry.get_model("digits").versions] == [1, 2]
    assert _job(registry, job_id).attempts == 1


def test_metric_job_reports_the_search(env: tuple[Settings, Registry]) -> None:
    settings, registry = env
    dataset_id = _dataset(settings, registry, digits_npz())
    job_id = _submit(
        settings,
        registry,
        method="metric",
        dataset_id=dataset_id,
        max_delta_percent=5,
        percentile_step=20,
    )
    execute_job(job_id, settings)
    job = _job(registry, job_id)
    assert job.status == "succeeded", job.error
    report = job.report
    assert report is not None and report["method"] == "metric"
    assert report["metric_name"] == "accuracy" and len(report["evaluations"]) >= 2
    assert report["metric_after"] >= report["metric_before"] * 0.95 - 1e-9
    png = registry.read_report_png(registry.resolve("digits", 2))
    assert png == spectral.plot_report(report)  # eigenvalues, with the search curve under them


def test_wrong_dataset_shape_fails_without_a_version(env: tuple[Settings, Registry]) -> None:
    settings, registry = env
    dataset_id = _dataset(settings, registry, digits_npz(features=10))
    job_id = _submit(settings, registry, method="metric", dataset_id=dataset_id)
    execute_job(job_id, settings)
    job = _job(registry, job_id)
    assert job.status == "failed" and job.result_version is None
    assert "Dataset x has samples of shape [10] but the model expects [64]" in (job.error or "")
    assert [v.version for v in registry.get_model("digits").versions] == [1]


def test_dataset_needs_a_compile_config(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings)
    registry = Registry.from_settings(settings, Database(settings))
    registry.create_model("digits", keras_bytes(build_digits_model(compiled=False)))
    dataset_id = _dataset(settings, registry, digits_npz(n=50))
    with pytest.raises(CompileConfigMissing, match="saved without a compile config"):
        _submit(settings, registry, method="metric", dataset_id=dataset_id)
    job_id = _submit(
        settings,
        registry,
        method="metric",
        dataset_id=dataset_id,
        percentile_step=50,
        compile={"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
    )
    execute_job(job_id, settings)
    assert _job(registry, job_id).status == "succeeded"


def test_cancel_stops_a_running_pretraining(env: tuple[Settings, Registry]) -> None:
    settings, registry = env
    dataset_id = _dataset(settings, registry, digits_npz(n=200))
    job_id = _submit(
        settings, registry, method="pretrain", percentile=30, dataset_id=dataset_id, epochs=2000
    )
    runner = threading.Thread(target=execute_job, args=(job_id, settings))
    started = time.monotonic()
    runner.start()
    while _job(registry, job_id).status == "queued":
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the 2000 epochs
    with registry.database.session() as session:
        assert state.request_cancel(session, job_id).cancel_requested
    runner.join(timeout=120)
    job = _job(registry, job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert time.monotonic() - started < 60
    assert [v.version for v in registry.get_model("digits").versions] == [1]


def test_reconstruct_job_records_its_options_and_matches_the_library(
    env: tuple[Settings, Registry],
) -> None:
    settings, registry = env
    dataset_id = _dataset(settings, registry, digits_npz(n=400))
    job_id = _submit(
        settings,
        registry,
        method="percentile",
        percentile=60,
        dataset_id=dataset_id,
        reconstruct="least_squares",
    )
    execute_job(job_id, settings)
    job = _job(registry, job_id)
    assert job.status == "succeeded", job.error
    assert job.params["reconstruct"] == "least_squares"
    assert job.params["calibration_dataset"] == dataset_id  # defaulted to the job's dataset
    report = job.report
    assert report is not None
    assert report["reconstruction_method"] == "least_squares"
    assert report["calibration_rows"] == 400 and report["calibration_dataset"] == dataset_id
    errors = report["reconstruction_errors"]
    assert errors and all(e["after"] <= e["before"] for e in errors.values()), errors

    x, y = digits()
    original = registry.load_keras_model(registry.resolve("digits", 1))
    expected, _ = spectral.prune(
        original, percentile=60, calibration={"x": x[:400]}, reconstruct="least_squares"
    )
    np.testing.assert_allclose(
        registry.load_keras_model(registry.resolve("digits", 2)).predict(x[:64], verbose=0),
        expected.predict(x[:64], verbose=0),
        rtol=1e-4,
        atol=1e-5,
    )


def test_recovery_reports_each_epoch_and_cancels_between_epochs(
    env: tuple[Settings, Registry],
) -> None:
    settings, registry = env
    dataset_id = _dataset(settings, registry, digits_npz(n=200))
    job_id = _submit(
        settings,
        registry,
        method="percentile",
        percentile=50,
        dataset_id=dataset_id,
        recover_epochs=5000,
        distill=True,
        temperature=3.0,
    )
    runner = threading.Thread(target=execute_job, args=(job_id, settings))
    runner.start()
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(seen) < 3 and time.monotonic() < deadline:
        job = _job(registry, job_id)
        if "epoch" in job.step:
            seen[job.step] = job.progress
        time.sleep(0.05)
    assert len(seen) >= 3, f"no per-epoch progress: {_job(registry, job_id).step}"
    fractions = list(seen.values())
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]
    with registry.database.session() as session:
        state.request_cancel(session, job_id)
    runner.join(timeout=120)
    job = _job(registry, job_id)
    assert job.status == "cancelled", (job.status, job.error)
    assert [v.version for v in registry.get_model("digits").versions] == [1]


def test_pretrain_job_takes_the_compression_options_and_records_them(
    env: tuple[Settings, Registry],
) -> None:
    settings, registry = env
    dataset_id = _dataset(settings, registry, digits_npz(n=300))
    calibration_id = _dataset(settings, registry, npz_bytes(*(a[300:500] for a in digits())))
    job_id = _submit(
        settings,
        registry,
        method="pretrain",
        percentile=60,
        dataset_id=dataset_id,
        epochs=1,
        reconstruct="least_squares",
        calibration_dataset=calibration_id,
        recover_epochs=1,
        distill=True,
        temperature=3.0,
        steps=2,
    )
    execute_job(job_id, settings)
    job = _job(registry, job_id)
    assert job.status == "succeeded", job.error
    assert job.params["reconstruct"] == "least_squares" and job.params["steps"] == 2
    assert job.params["recover_dataset"] == dataset_id  # defaulted to the job's dataset
    report = job.report
    assert report is not None and report["method"] == "pretrain"
    assert report["reconstruction_method"] == "least_squares"
    assert report["calibration_rows"] == 200 and report["calibration_dataset"] == calibration_id
    assert report["recovery_epochs"] == 1 and report["recover_dataset"] == dataset_id
    assert report["distill"] is True and report["temperature"] == 3.0
    assert report["steps"] == 2
    assert [v.version for v in registry.get_model("digits").versions] == [1, 2]


def test_promotion_gate_moves_the_alias_once_even_when_the_job_is_retried(
    env: tuple[Settings, Registry],
) -> None:
    settings, registry = env
    dataset = _dataset(settings, registry, digits_npz(n=300))
    registry.set_alias("digits", "production", 1)
    promote = {"alias": "production", "max_drop_percent": 100, "metric": "loss"}
    job_id = _submit(
        settings, registry, method="percentile", percentile=30, dataset_id=dataset, promote=promote
    )
    execute_job(job_id, settings)
    job = _job(registry, job_id)
    assert job.status == "succeeded", job.error
    assert job.report is not None
    first = job.report["promotion"]
    assert first["promoted"] and first["metric"] == "loss", first
    # The report compared accuracy, so the gate evaluated both stored versions itself.
    assert first["metric_before"] != job.report["metric_before"]
    assert registry.alias_version("digits", "production") == 2
    assert registry.resolve("digits", 2).report == job.report

    # The worker is lost after storing the version; the job runs again. It gets its version back,
    # reports the decision that counted, and does not move the alias someone has moved since.
    registry.set_alias("digits", "production", 1)
    with registry.database.session() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(status="queued", result_version=None)
        )
    execute_job(job_id, settings)
    job = _job(registry, job_id)
    assert job.status == "succeeded" and job.result_version == 2 and job.attempts == 2
    assert job.report is not None and job.report["promotion"] == first
    assert registry.alias_version("digits", "production") == 1
    assert registry.get_model("digits").latest_version == 2
    reasons = [e.reason for e in registry.alias_history("digits", "production")]
    assert reasons == ["set", "promotion", "set"]
