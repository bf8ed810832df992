"""The Celery task: a thin wrapper that takes a job id and calls the job runner."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import TimeLimitExceeded

from service.messaging import RUN_JOB_TASK, send_job
from service.settings import get_settings
from worker.sessions import fail_job

logger = logging.getLogger(__name__)


class PruningTask(Task):  # type: ignore[misc]
    """Marks the job failed when the task dies outside the runner's own handling."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        if not job_id:
            return
        settings = get_settings()
        if isinstance(exc, TimeLimitExceeded):
            reason = f"Hard time limit of {settings.job_time_limit_s} s exceeded; job killed"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        fail_job(settings, str(job_id), reason)


@shared_task(bind=True, base=PruningTask, name=RUN_JOB_TASK)
def run_pruning_job(self: Task, job_id: str) -> None:
    # Imported here so the parent process never loads TensorFlow before forking.
    from worker.runner import execute_job

    def enqueue(released_job_id: str, queue: str) -> None:
        send_job(self.app, released_job_id, queue)

    execute_job(job_id, get_settings(), enqueue)
