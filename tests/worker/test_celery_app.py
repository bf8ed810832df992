"""Celery configuration, and the rule that a worker's parent never imports TensorFlow."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.settings import Settings
from worker.celery_app import TASK_NAME, celery_config, create_celery

ROOT = Path(__file__).resolve().parents[2]


def test_config_follows_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        default_queue="cpu-jobs",
        job_soft_time_limit_s=11,
        job_time_limit_s=13,
        broker_polling_interval_s=0.05,
    )
    config = celery_config(settings)
    url = f"spectral-sqla+sqlite:///{(tmp_path / 'broker.db').resolve()}"
    assert config["broker_url"] == url  # kombu's sqla transport, polled at our interval
    assert config["accept_content"] == ["json"]
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["task_acks_late"] is True and config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert (config["task_soft_time_limit"], config["task_time_limit"]) == (11, 13)
    assert config["task_default_queue"] == "cpu-jobs"
    assert config["broker_transport_options"]["polling_interval"] == 0.05  # type: ignore[index]
    redis = celery_config(Settings(broker_url="redis://127.0.0.1:6379/3", job_time_limit_s=7200))
    assert redis["broker_url"] == "redis://127.0.0.1:6379/3"
    assert redis["broker_transport_options"]["visibility_timeout"] > 7200  # type: ignore[index]


def test_app_uses_settings(tmp_path: Path) -> None:
    app = create_celery(Settings(data_dir=tmp_path, default_queue="q1"))
    assert app.conf.task_ignore_result is True
    assert app.conf.task_default_queue == "q1"
    assert app.conf.broker_url.endswith(str(tmp_path / "broker.db"))


def test_worker_parent_does_not_import_tensorflow() -> None:
    code = (
        "import sys, worker.celery_app, worker.tasks, worker.lifecycle, worker.job_state\n"
        "from worker.celery_app import app\n"
        f"assert {TASK_NAME!r} in app.tasks, sorted(app.tasks)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'jax', 'spectral'))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_readyz_checks_the_broker(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(Settings(data_dir=tmp_path / "ok"))) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["broker"] == "ok"

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    settings = Settings(data_dir=tmp_path / "dead", broker_url=dead)
    with TestClient(create_app(settings)) as client:
        started = time.monotonic()
        down = client.get("/readyz")
    assert down.status_code == 503 and down.json()["checks"]["broker"].startswith("failed")
    assert down.json()["checks"]["database"] == "ok"
    assert time.monotonic() - started < 10


def test_task_failure_hook_marks_the_job_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Celery calls when a task dies outside `execute_job` (e.g. the hard time limit)."""
    from celery.exceptions import TimeLimitExceeded

    from service import jobs
    from service.db import Database, upgrade_database
    from service.settings import get_settings
    from worker.tasks import run_pruning_job

    monkeypatch.setenv("SPECTRAL_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    settings = get_settings()
    upgrade_database(settings)
    db = Database(settings)
    request = jobs.PruneRequest(model_id="m", percentile=10)
    with db.session() as session:
        job_id = jobs.create_job(session, request, version=1, settings=settings).job.id
        jobs.claim_job(session, job_id, max_attempts=3)
    try:
        run_pruning_job.on_failure(TimeLimitExceeded(5), "task-1", (job_id,), {}, None)
    finally:
        get_settings.cache_clear()
    with db.session() as session:
        job = jobs.get_job(session, job_id)
    assert job.status == "failed"
    assert job.error == "Hard time limit of 1900 s exceeded; job killed"
