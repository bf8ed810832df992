"""/metrics across API processes: ``spectral api --workers 2`` sums both workers' counters, job
metrics come from the database, and the run's metrics directory goes when the API stops."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from service.db import Database, utcnow
from service.jobs.table import Job
from service.settings import Settings
from tests.support.api import RunningApi, launch_api, stop_api
from tests.support.metrics import counter_files, process_samples, sample, scrape

REQUESTS = "spectral_http_requests_total"
ROUTE = {"method": "GET", "route": "/models", "status": "200"}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningApi, Path]]:
    """``spectral api --workers 2`` as users start it (no PROMETHEUS_MULTIPROC_DIR), with the
    directory the CLI makes for the run, found under the TMPDIR it was given."""
    work_dir = tmp_path_factory.mktemp("api")
    temp = work_dir / "tmp"
    temp.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        server = launch_api({"SPECTRAL_API_WORKERS": "2", "TMPDIR": str(temp)}, work_dir)
    try:
        (directory,) = temp.glob("spectral-metrics-*")
        yield server, directory
    finally:
        stop_api(server)


def _get_models(base_url: str, count: int) -> None:
    """``count`` GETs, 8 at a time, each on a new connection, so both workers accept some."""

    def one(_: int) -> int:
        return httpx.get(f"{base_url}/models", timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(count))) == {200}


def test_every_scrape_reports_the_requests_of_both_workers(
    two_workers: tuple[RunningApi, Path], tmp_path: Path
) -> None:
    api, metrics_dir = two_workers
    assert sample(scrape(api), REQUESTS, **ROUTE) == 0
    sent = 0
    per_process: dict[int, float] = {}
    # Which worker accepts a connection is the kernel's choice: send until both served some
    # (almost always within the first 40), so the sum below is one of two processes.
    while sent < 400 and sum(1 for n in per_process.values() if n > 0) < 2:
        _get_models(api, 40)
        sent += 40
        per_process = {
            pid: sample(process_samples([path], tmp_path / str(pid)), REQUESTS, **ROUTE)
            for pid, path in counter_files(metrics_dir).items()
        }
    served = {pid: n for pid, n in per_process.items() if n > 0}
    assert len(served) == 2, f"one worker took all {sent} requests: {per_process}"
    assert api.process.pid not in served  # the workers, not the supervisor
    assert sum(served.values()) == sent
    # Each scrape is answered by one worker or the other; every one reports the total.
    for _ in range(8):
        assert sample(scrape(api), REQUESTS, **ROUTE) == sent


def _job(index: int, method: str, status: str, queue: str, seconds: float | None) -> Job:
    created = utcnow() - timedelta(hours=2)
    started = created + timedelta(seconds=5) if status != "queued" and seconds != 0 else None
    finished = started + timedelta(seconds=seconds) if started and seconds else None
    return Job(
        id=f"metrics-{index}",
        model_id="m",
        version=1,
        method=method,
        params={},
        queue=queue,
        status=status,
        request_hash="0" * 64,
        created_at=created,
        started_at=started,
        finished_at=finished,
    )


def test_job_metrics_are_read_from_the_database(two_workers: tuple[RunningApi, Path]) -> None:
    api, _ = two_workers
    jobs = [
        ("percentile", "queued", "spectral", None),
        ("percentile", "queued", "spectral", None),
        ("percentile", "queued", "spectral", None),
        ("metric", "queued", "gpu", None),
        ("metric", "queued", "gpu", None),
        ("metric", "running", "gpu", None),
        ("metric", "succeeded", "gpu", 2.0),
        ("metric", "succeeded", "gpu", 40.0),
        ("percentile", "failed", "spectral", 700.0),
        # Cancelled while queued: never started, so no duration.
        ("pretrain", "cancelled", "spectral", 0),
    ]
    # The server's database (its SPECTRAL_* come from launch_api alone, not from this shell).
    registry_db = (api.data_dir / "registry.db").resolve()
    database = Database(Settings(data_dir=api.data_dir, database_url=f"sqlite:///{registry_db}"))
    try:
        with database.session() as session:
            session.add_all(_job(i, *job) for i, job in enumerate(jobs))
    finally:
        database.dispose()

    for _ in range(4):  # either worker answers the same: the numbers are the database's
        samples = scrape(api)
        assert sample(samples, "spectral_jobs", method="percentile", status="queued") == 3
        assert sample(samples, "spectral_jobs", method="metric", status="queued") == 2
        assert sample(samples, "spectral_jobs", method="metric", status="running") == 1
        assert sample(samples, "spectral_jobs", method="metric", status="succeeded") == 2
        assert sample(samples, "spectral_jobs", method="percentile", status="failed") == 1
        assert sample(samples, "spectral_jobs", method="pretrain", status="cancelled") == 1
        assert ("spectral_jobs", frozenset({("method", "pretrain"), ("status", "queued")})) in (
            samples
        )
        assert sample(samples, "spectral_jobs", method="pretrain", status="queued") == 0
        assert sample(samples, "spectral_job_queue_depth", queue="spectral") == 3
        assert sample(samples, "spectral_job_queue_depth", queue="gpu") == 2

        succeeded = {"method": "metric", "status": "succeeded"}
        duration = "spectral_job_duration_seconds"
        assert sample(samples, f"{duration}_bucket", le="1.0", **succeeded) == 0
        assert sample(samples, f"{duration}_bucket", le="5.0", **succeeded) == 1
        assert sample(samples, f"{duration}_bucket", le="30.0", **succeeded) == 1
        assert sample(samples, f"{duration}_bucket", le="60.0", **succeeded) == 2
        assert sample(samples, f"{duration}_count", **succeeded) == 2
        assert sample(samples, f"{duration}_sum", **succeeded) == pytest.approx(42.0, abs=0.01)
        failed = {"method": "percentile", "status": "failed"}
        assert sample(samples, f"{duration}_bucket", le="600.0", **failed) == 0
        assert sample(samples, f"{duration}_bucket", le="1800.0", **failed) == 1
        assert sample(samples, f"{duration}_count", **failed) == 1
        cancelled = {"method": "pretrain", "status": "cancelled"}
        assert (f"{duration}_count", frozenset(cancelled.items())) not in samples
        assert sample(samples, "spectral_job_metrics_up") == 1


def test_stopping_the_api_removes_its_metrics_directory(
    two_workers: tuple[RunningApi, Path],
) -> None:
    """Last in this module: it stops the shared server (SIGTERM, as a supervisor sends)."""
    api, metrics_dir = two_workers
    assert counter_files(metrics_dir)
    stop_api(api)
    assert api.process.returncode == 0, api.log_text()[-2000:]
    assert not metrics_dir.exists()


def test_an_api_process_that_stops_marks_itself_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn has no per-worker exit hook: the app's lifespan tells prometheus-client, which
    drops the process's live-gauge files and keeps its counters."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    shared = tmp_path / "multiproc"
    shared.mkdir()
    pid = os.getpid()
    live, other, counter = (
        shared / f"gauge_livesum_{pid}.db",
        shared / f"gauge_livesum_{pid + 1}.db",
        shared / f"counter_{pid}.db",
    )
    for path in (live, other, counter):
        path.write_bytes(b"")
    # This test process imported prometheus-client without the variable: point the check at
    # the directory directly.
    monkeypatch.setattr("service.metrics.multiprocess_dir", lambda: shared)
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))) as client:
        assert client.get("/healthz").status_code == 200
        assert live.exists()
    assert not live.exists()
    assert other.exists() and counter.exists()
