"""The API's side of the job queue: sends "run job <id>" messages by task name.

It holds a Celery client configured like the workers (`service.messaging`), used only to send;
the worker's code is never imported.
"""

from __future__ import annotations

from celery import Celery

from service.messaging import celery_config, check_broker, send_job
from service.settings import Settings


class JobBroker:
    """Sends job messages to the broker ``settings`` name, and checks that it answers."""

    def __init__(self, settings: Settings) -> None:
        # Not the "current" Celery app: the API's client must not leak into other code.
        self._celery = Celery("spectral-api", set_as_current=False)
        self._celery.conf.update(celery_config(settings))

    def enqueue(self, job_id: str, queue: str) -> None:
        send_job(self._celery, job_id, queue)

    def check(self) -> None:
        """Raise when the broker cannot be reached (for ``/readyz``)."""
        check_broker(self._celery)
