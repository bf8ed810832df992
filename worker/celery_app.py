"""The Celery application: broker and queue configuration taken from `Settings`.

Start a worker with ``spectral worker`` (or ``celery -A worker.celery_app worker``). The broker is
``settings.resolved_broker_url``: an embedded SQLite broker under ``data_dir`` by default, Redis
when ``SPECTRAL_BROKER_URL=redis://...``.

TensorFlow is not fork-safe, so this module, and everything it imports, stays free of
TensorFlow, Keras and `spectral`: the pool's children import them after the fork.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery

from service.settings import Settings, get_settings
from worker.sqlite_broker import embedded_url

logger = logging.getLogger(__name__)

TASK_NAME = "spectral.run_pruning_job"


def celery_config(settings: Settings) -> dict[str, object]:
    """The Celery configuration for these settings."""
    return {
        "broker_url": embedded_url(settings.resolved_broker_url),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Embedded SQLite broker: how often an idle worker looks for a message.
            "polling_interval": settings.broker_polling_interval_s,
            # Redis re-delivers an unacknowledged message after this; it must outlast a job.
            "visibility_timeout": max(3600, settings.job_time_limit_s + 60),
        },
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # the jobs table, not a result backend, is the record
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.job_soft_time_limit_s,
        "task_time_limit": settings.job_time_limit_s,
        "task_default_queue": settings.default_queue,
        "task_create_missing_queues": True,
        # A child imports TensorFlow when it starts; give it time before Celery gives up on it.
        "worker_proc_alive_timeout": 120.0,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def create_celery(settings: Settings | None = None) -> Celery:
    """A Celery app configured from ``settings`` (the API uses its own to send messages)."""
    settings = settings or get_settings()
    celery = Celery("spectral")
    celery.conf.update(celery_config(settings))
    return celery


def enqueue_job(celery: Celery, job_id: str, queue: str) -> None:
    """Send the message that makes a worker on ``queue`` run job ``job_id``."""
    celery.send_task(TASK_NAME, args=[job_id], queue=queue)


def broker_check(celery: Celery) -> Callable[[], None]:
    """A readiness check for ``/readyz``: raises when the broker cannot be reached."""

    def check() -> None:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0.5, timeout=3
            )

    return check


app = create_celery()
app.conf.include = ["worker.tasks", "worker.lifecycle"]
