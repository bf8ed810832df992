"""How a running job talks to its row: progress, heartbeats, and cancellation.

A client's cancel request only sets a flag on the row; these helpers read it at each progress
step and between training epochs, and raise `JobCancelled` there. At the same points they raise
`JobReleased` once the worker shutting down asks for the job back (see `worker.shutdown`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session

from service.errors import JobCancelled
from service.jobs import state
from service.settings import Settings
from worker.sessions import in_transaction, job_session
from worker.shutdown import JobReleased, release_requested

logger = logging.getLogger(__name__)

# Share of the job's progress given to the library's own steps.
LIBRARY_START, LIBRARY_END = 0.1, 0.85


class Heartbeat:
    """Keeps the job's lease fresh while a long library step (e.g. ``fit``) runs."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        self._settings = settings
        self._job_id = job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self._settings.job_heartbeat_s):
            try:
                with job_session(self._settings) as session:
                    state.heartbeat(session, self._job_id)
            except Exception:
                logger.exception("heartbeat of job %s failed", self._job_id)


class JobProgress:
    """Records a job's progress; raises `JobCancelled` once a client asked to cancel it, and
    `JobReleased` once its worker is shutting down and wants it back."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        self._settings = settings
        self.job_id = job_id
        # Celery's soft limit raises in the job's thread from a signal handler, wherever the job
        # is; a library that catches Exception there swallows it and the job runs on to the hard
        # kill. Checking the same deadline at each step and epoch makes the soft limit hold.
        self._soft_deadline = time.monotonic() + settings.job_soft_time_limit_s

    def _stop_if_asked(self, what: str) -> None:
        if release_requested():
            raise JobReleased(what)
        if time.monotonic() > self._soft_deadline:
            raise SoftTimeLimitExceeded(f"{what}: soft time limit reached")

    def step(self, fraction: float, message: str) -> None:
        cancel = in_transaction(
            self._settings,
            lambda session: state.record_progress(session, self.job_id, fraction, message),
        )
        if cancel:
            raise JobCancelled(self.job_id)
        self._stop_if_asked(self.job_id)

    def library(self, fraction: float, message: str) -> None:
        """The library's ``progress`` callback, mapped into the job's library span."""
        span = LIBRARY_END - LIBRARY_START
        self.step(LIBRARY_START + span * max(0.0, min(1.0, fraction)), message)

    def check_cancel(self, message: str) -> None:
        def beat(session: Session) -> bool:
            state.heartbeat(session, self.job_id)
            return state.is_cancel_requested(session, self.job_id)

        cancel = in_transaction(self._settings, beat)
        if cancel:
            raise JobCancelled(f"{self.job_id} ({message})")
        self._stop_if_asked(f"{self.job_id} ({message})")

    def epoch_callback(self) -> Any:
        """A Keras callback that lets a cancel request stop ``fit`` between epochs."""
        import keras

        progress = self

        class CancelBetweenEpochs(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                progress.check_cancel(f"epoch {epoch + 1}")

        return CancelBetweenEpochs()
