"""Celery configuration, and the rule that a worker's parent never imports TensorFlow."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

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
