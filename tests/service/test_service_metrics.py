"""service.metrics: job metrics from the jobs table (SQLite and PostgreSQL), the scrape when the
database is down, which registry a scrape reads, and the CLI's per-run metrics directory."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from service.cli.server import _shared_metrics_dir
from service.db import Database, utcnow
from service.jobs.table import Job
from service.metrics import JOB_DURATION_BUCKETS, JobMetrics, ServiceMetrics
from service.settings import Settings
from tests.support.metrics import Samples, parse_samples, sample

DURATION = "spectral_job_duration_seconds"


def _scrape(metrics: JobMetrics) -> Samples:
    return parse_samples(ServiceMetrics().render(metrics).decode())


def _add_jobs(db: Database, queue: str, jobs: list[tuple[str, str, float | None]]) -> None:
    start = utcnow() - timedelta(days=1)
    with db.session() as session:
        for index, (method, status, seconds) in enumerate(jobs):
            session.add(
                Job(
                    id=f"{queue}-{index}",
                    model_id="m",
                    version=1,
                    method=method,
                    params={},
                    queue=queue,
                    status=status,
                    request_hash="0" * 64,
                    created_at=start,
                    started_at=start if seconds is not None else None,
                    finished_at=start + timedelta(seconds=seconds) if seconds is not None else None,
                )
            )


def test_job_metrics_count_jobs_and_time_finished_ones(db: Database) -> None:
    # PostgreSQL is the session's shared database: compare with a scrape taken before, and
    # look at this test's own queue for the depth.
    queue = db.settings.default_queue
    metrics = JobMetrics(db, db.settings.all_queues)
    before = _scrape(metrics)
    assert sample(before, "spectral_job_queue_depth", queue=queue) == 0
    assert ("spectral_job_queue_depth", frozenset({("queue", queue)})) in before

    _add_jobs(
        db,
        queue,
        [
            ("percentile", "queued", None),
            ("percentile", "queued", None),
            ("metric", "running", None),
            ("metric", "succeeded", 0.5),
            ("metric", "succeeded", 90.0),
            ("metric", "succeeded", 7200.0),  # past the last bucket: only +Inf
            ("percentile", "failed", 12.25),
            ("pretrain", "cancelled", None),
        ],
    )
    after = _scrape(metrics)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("spectral_jobs", method="percentile", status="queued") == 2
    assert delta("spectral_jobs", method="metric", status="running") == 1
    assert delta("spectral_jobs", method="metric", status="succeeded") == 3
    assert delta("spectral_jobs", method="percentile", status="failed") == 1
    assert delta("spectral_jobs", method="pretrain", status="cancelled") == 1
    assert delta("spectral_jobs", method="metric", status="queued") == 0
    assert sample(after, "spectral_job_queue_depth", queue=queue) == 2

    ok = {"method": "metric", "status": "succeeded"}
    for bound in JOB_DURATION_BUCKETS:  # cumulative: each bucket counts the runs up to it
        within = sum(1 for seconds in (0.5, 90.0, 7200.0) if seconds <= bound)
        assert delta(f"{DURATION}_bucket", le=str(bound), **ok) == within, bound
    assert delta(f"{DURATION}_bucket", le="+Inf", **ok) == 3
    assert delta(f"{DURATION}_count", **ok) == 3
    assert delta(f"{DURATION}_sum", **ok) == pytest.approx(7290.5, abs=0.01)
    failed = {"method": "percentile", "status": "failed"}
    assert delta(f"{DURATION}_sum", **failed) == pytest.approx(12.25, abs=0.01)
    assert delta(f"{DURATION}_bucket", le="15.0", **failed) == 1
    assert delta(f"{DURATION}_bucket", le="5.0", **failed) == 0
    assert sample(after, "spectral_job_metrics_up") == 1


def test_job_metrics_are_one_grouped_query_however_many_jobs(db: Database) -> None:
    queue = db.settings.default_queue
    _add_jobs(db, queue, [("percentile", "succeeded", float(i)) for i in range(300)])
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        samples = _scrape(JobMetrics(db, [queue]))
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert len(statements) == 1, statements
    assert "GROUP BY" in statements[0]
    assert sample(samples, "spectral_jobs", method="percentile", status="succeeded") >= 300


def test_a_database_down_leaves_the_http_metrics_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_path = tmp_path / "no-such-dir" / "registry.db"
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{secret_path}")
    database = Database(settings)
    metrics = ServiceMetrics()
    metrics.http_requests.labels("GET", "/models", "200").inc()
    with caplog.at_level(logging.WARNING, logger="service.metrics"):
        body = metrics.render(JobMetrics(database, ["spectral"])).decode()
    samples = parse_samples(body)
    assert sample(samples, "spectral_job_metrics_up") == 0
    assert (
        sample(samples, "spectral_http_requests_total", method="GET", route="/models", status="200")
        == 1
    )
    assert "spectral_jobs" not in body
    assert str(tmp_path) not in body  # the reason goes to the log, not to the scraper
    assert "job metrics query failed" in caplog.text


def test_without_the_variable_a_scrape_reads_this_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.predictions.labels("m", "1", "ok").inc(3)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    text = first.render().decode()
    assert 'spectral_predict_requests_total{model="m",outcome="ok",version="1"} 3.0' in text
    assert "model=" not in second.render().decode()  # apps in one process don't mix

    # Set after prometheus-client was imported (this process): the values live in memory, so
    # summing the directory would report nothing. The scrape says so and reads the process.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="service.metrics"):
        text = first.render().decode()
    assert 'spectral_predict_requests_total{model="m",outcome="ok",version="1"} 3.0' in text
    assert "this process only" in caplog.text


def test_a_given_metrics_directory_is_emptied_of_a_previous_runs_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "multiproc"
    given.mkdir()
    (given / "counter_4242.db").write_bytes(b"stale")
    (given / "histogram_4242.db").write_bytes(b"stale")
    (given / "notes.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    with _shared_metrics_dir() as directory:
        assert directory == given
        assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
    assert given.exists()  # the operator's directory stays
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(given)


def test_without_a_given_directory_each_run_gets_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    with _shared_metrics_dir() as first:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(first)
        assert first.parent == tmp_path and not any(first.iterdir())
        (first / "counter_1.db").write_bytes(b"x")
    assert not first.exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    with pytest.raises(SystemExit), _shared_metrics_dir() as second:
        raise SystemExit(143)  # what `spectral api` raises on SIGTERM
    assert second != first and not second.exists()
