"""Worker start-up: recover lost jobs, keep reaping them, and warm up each pool child.

* ``worker_init`` (parent process): bring the database schema up to date (this also makes
  ``data_dir``, where the embedded SQLite broker lives).
* ``worker_ready`` (parent process): re-send queued jobs and recover running jobs whose
  heartbeat expired, then start a thread doing the latter every half lease.
* ``worker_process_init`` (each child, after the fork): listen for the shutdown's release
  request (`worker.shutdown`), import TensorFlow/Keras and `spectral` once, so the first job
  does not pay for it, and log the devices a job will use (a GPU is used automatically when
  TensorFlow or JAX sees one).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready
from sqlalchemy.orm import Session

from service.db import upgrade_database
from service.jobs import state
from service.jobs.submission import Enqueue
from service.jobs.table import Job
from service.messaging import send_job
from service.settings import Settings, get_settings
from worker.sessions import in_transaction, job_session
from worker.shutdown import install_child_handler

logger = logging.getLogger(__name__)


def recover_lost_jobs(
    settings: Settings,
    enqueue: Enqueue,
    *,
    queues: Sequence[str] | None = None,
    resend_queued: bool = False,
) -> tuple[list[str], list[str]]:
    """Re-queue (or fail) running jobs whose heartbeat expired and send their messages again.

    With ``resend_queued`` (at worker start), also re-send every queued job: its message may have
    been lost with a broker or worker. A duplicate message is harmless, because only one
    delivery can claim a queued job.
    """

    def recover(session: Session) -> tuple[list[str], list[str], list[tuple[str, str]]]:
        requeued, failed = state.recover_jobs(
            session,
            lease_s=settings.job_lease_s,
            max_attempts=settings.job_max_attempts,
            queues=queues,
        )
        to_send = (
            state.queued_job_ids(session, queues)
            if resend_queued
            else [(job_id, session.get(Job, job_id).queue) for job_id in requeued]  # type: ignore[union-attr]
        )
        return requeued, failed, to_send

    requeued, failed, to_send = in_transaction(settings, recover)
    for job_id, queue in to_send:
        enqueue(job_id, queue)
    if requeued or failed or to_send:
        logger.warning(
            "recovery: re-queued %s, failed %s, sent %d message(s)", requeued, failed, len(to_send)
        )
    return requeued, failed


class QueuedResender:
    """Sends the message of each job queued for over ``settings.job_resend_queued_s`` again, at
    most once per that period (in this process).

    A queued job's message can be lost for good: Redis restarted without persistence, or the
    API died after recording the job and before sending it. The row is the record, so the
    message is sent again from it; the duplicate, if the first message was not lost after all,
    finds the job claimed or finished and does nothing.
    """

    def __init__(self, settings: Settings, enqueue: Enqueue, queues: Sequence[str] | None) -> None:
        self._settings = settings
        self._enqueue = enqueue
        self._queues = queues
        self._sent_at: dict[str, float] = {}

    def sent(self, job_ids: Sequence[str]) -> None:
        """Record messages sent by other means (at start-up), so they are not sent again now."""
        now = time.monotonic()
        self._sent_at.update(dict.fromkeys(job_ids, now))

    def __call__(self) -> list[str]:
        """Send what is due; returns the ids of the jobs whose message was sent."""
        period = self._settings.job_resend_queued_s
        queued = in_transaction(
            self._settings,
            lambda session: state.queued_job_ids(session, self._queues, older_than_s=period),
        )
        now = time.monotonic()
        # Jobs no longer queued need no memory.
        self._sent_at = {
            job_id: self._sent_at[job_id] for job_id, _ in queued if job_id in self._sent_at
        }
        due = [
            (job_id, queue)
            for job_id, queue in queued
            if now - self._sent_at.get(job_id, -period) >= period
        ]
        for job_id, queue in due:
            self._enqueue(job_id, queue)
            self._sent_at[job_id] = now
        if due:
            logger.warning(
                "sent the message of %d job(s) queued for over %g s again: %s",
                len(due),
                period,
                [job_id for job_id, _ in due],
            )
        return [job_id for job_id, _ in due]


def _consumer_queues(consumer: Any) -> list[str] | None:
    try:
        return [queue.name for queue in consumer.task_consumer.queues]
    except AttributeError:
        return None


@worker_init.connect
def _prepare_database(**_: Any) -> None:
    upgrade_database(get_settings())


@worker_ready.connect
def _recover_on_start(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    queues = _consumer_queues(sender)
    celery = sender.app

    def send(job_id: str, queue: str) -> None:
        send_job(celery, job_id, queue)

    logger.info(
        "worker ready on queues %s, broker %s", queues, celery.conf.broker_url.split("@")[-1]
    )
    resend = QueuedResender(settings, send, queues)
    try:
        recover_lost_jobs(settings, send, queues=queues, resend_queued=True)
        with job_session(settings) as session:
            resend.sent([job_id for job_id, _ in state.queued_job_ids(session, queues)])
    except Exception:
        logger.exception("start-up job recovery failed")

    stop = threading.Event()
    period = max(min(settings.job_lease_s, settings.job_resend_queued_s) / 2, 0.5)

    def reap() -> None:
        while not stop.wait(period):
            try:
                recover_lost_jobs(settings, send, queues=queues)
                resend()
            except Exception:
                logger.exception("job recovery failed")

    threading.Thread(target=reap, name="spectral-job-reaper", daemon=True).start()


@worker_process_init.connect
def _warm_up_child(**_: Any) -> None:
    install_child_handler()  # first: a job may run as soon as this returns
    import keras

    import spectral  # noqa: F401  (registers the layer for model loading)

    backend = keras.backend.backend()
    devices: list[str]
    if backend == "tensorflow":
        import tensorflow as tf

        devices = [device.name for device in tf.config.list_logical_devices()]
    elif backend == "jax":
        import jax

        devices = [str(device) for device in jax.devices()]
    else:
        devices = ["(not listed for this backend)"]
    logger.info(
        "pool child ready: pid %d, keras backend %s, devices %s", os.getpid(), backend, devices
    )
