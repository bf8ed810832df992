"""The job message contract between the API, which sends, and the workers, which consume.

Both sides build their Celery app from `celery_config(settings)` and name the one task,
`RUN_JOB_TASK`, by its name: the API never imports the worker's code.

The embedded broker is kombu's SQLAlchemy transport on a SQLite file, polled at our interval.
kombu's ``sqla`` transport hands every transport option to ``create_engine``, so the usual
``polling_interval`` option breaks it. This module's transport (alias ``spectral-sqla``) keeps
the polling options for kombu and gives the engine only what SQLite needs: a busy timeout,
since the API and every worker open the same file. The alias is registered when a
configuration for it is built, never at import.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as sqla
from sqlalchemy import create_engine

from service.settings import Settings

RUN_JOB_TASK = "spectral.run_pruning_job"
EMBEDDED_ALIAS = "spectral-sqla"
_SQLITE_BUSY_TIMEOUT_S = 30


class Channel(sqla.Channel):  # type: ignore[misc]
    def _engine_from_config(self) -> Any:
        return create_engine(
            self.connection.client.hostname,
            connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        )


class Transport(sqla.Transport):  # type: ignore[misc]
    Channel = Channel


def embedded_url(url: str) -> str:
    """Route a ``sqla+`` URL to the embedded transport (registering its alias with kombu);
    other URLs are returned unchanged."""
    if not url.startswith("sqla+"):
        return url
    TRANSPORT_ALIASES[EMBEDDED_ALIAS] = f"{__name__}:Transport"
    return f"{EMBEDDED_ALIAS}+{url.removeprefix('sqla+')}"


def broker_transport_options(settings: Settings) -> dict[str, float]:
    options: dict[str, float] = {
        # Embedded SQLite broker: how often an idle worker looks for a message.
        "polling_interval": settings.broker_polling_interval_s,
        # Redis re-delivers an unacknowledged message after this; it must outlast a job.
        "visibility_timeout": max(3600, settings.job_time_limit_s + 60),
    }
    timeout = settings.broker_visibility_timeout_s
    if timeout is not None:
        # The consumer scans for unacknowledged messages every interval x throttle seconds
        # (kombu: 10 x 10); scan as often as the timeout asks, so a re-delivery happens when
        # configured.
        options["visibility_timeout"] = timeout
        options["unacked_restore_interval"] = max(1.0, min(10.0, timeout / 2))
        options["unacked_restore_throttle"] = 1
    return options


def celery_config(settings: Settings) -> dict[str, object]:
    """The Celery configuration for these settings, the same for senders and workers."""
    return {
        "broker_url": embedded_url(settings.resolved_broker_url),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": broker_transport_options(settings),
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


def send_job(celery: Any, job_id: str, queue: str) -> None:
    """Send the message that makes a worker on ``queue`` run job ``job_id``."""
    celery.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)


def check_broker(celery: Any) -> None:
    """Raise when the broker cannot be reached (the readiness check)."""
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=3)
