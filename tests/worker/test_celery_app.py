"""The workers' Celery app, the task's failure hook, and the rule that a worker's parent never
imports TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from celery.exceptions import TimeLimitExceeded

from service.db import Database, upgrade_database
from service.jobs import state, submission
from service.jobs.params import PruneRequest
from service.jobs.table import get_job
from service.messaging import RUN_JOB_TASK
from service.settings import Settings, get_settings
from tests.support.api import REPO_ROOT, child_env
from worker.celery_app import create_celery


def test_app_uses_settings(tmp_path: Path) -> None:
    app = create_celery(Settings(data_dir=tmp_path, default_queue="q1"))
    assert app.conf.task_ignore_result is True
    assert app.conf.task_default_queue == "q1"
    assert app.conf.broker_url.endswith(str(tmp_path / "broker.db"))
    assert RUN_JOB_TASK in app.tasks


def test_worker_parent_does_not_import_tensorflow(tmp_path: Path) -> None:
    code = (
        "import sys, worker.celery_app, worker.tasks, worker.lifecycle, worker.sessions\n"
        "from worker.celery_app import app\n"
        f"assert {RUN_JOB_TASK!r} in app.tasks, sorted(app.tasks)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'jax', 'spectral'))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=child_env({"SPECTRAL_DATA_DIR": str(tmp_path)}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_task_failure_hook_marks_the_job_failed(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What Celery calls when a task dies outside `execute_job` (e.g. the hard time limit)."""
    from worker.tasks import run_pruning_job

    monkeypatch.setenv("SPECTRAL_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()  # the task reads this process's settings, as a worker does
    try:
        settings = get_settings()
        upgrade_database(settings)
        db = Database(settings)
        request = PruneRequest(model_id="m", percentile=10)
        with db.session() as session:
            job_id = submission.create_job(session, request, version=1, settings=settings).job.id
            state.claim_job(session, job_id, max_attempts=3)
        run_pruning_job.on_failure(TimeLimitExceeded(5), "task-1", (job_id,), {}, None)
    finally:
        get_settings.cache_clear()
    with db.session() as session:
        job = get_job(session, job_id)
    assert job.status == "failed"
    assert job.error == "Hard time limit of 1900 s exceeded; job killed"
