"""Graceful shutdown of a worker: its running job finishes, or is released, within a window.

Celery's own answer to SIGTERM (or a first Ctrl-C) is a warm shutdown: stop taking messages,
then wait for the running tasks without any bound. A pruning job can run for half an hour,
and a supervisor (Kubernetes, ``docker stop``) sends SIGKILL after some tens of seconds, so
the job would be lost and come back only when its lease expires. Here, in the worker's parent
process (``worker_shutting_down``), the running job gets ``settings.job_shutdown_s``:

1. At once, Celery stops taking messages. The running job goes on; if it ends within the
   window, it just ends (and the worker exits right after).
2. At ``job_shutdown_s``, the parent sends ``RELEASE_SIGNAL`` to each pool child. The child's job
   stops at its next step boundary (a progress step, a training epoch's end: where a cancel
   request is also read), its row goes back to ``queued`` with that attempt not counted (see
   `service.jobs.state.release_job`), and its message is sent again, so another worker starts
   it at once instead of after the lease.
3. At ``job_shutdown_s + RELEASE_GRACE_S``, children still busy (a step longer than the grace)
   are SIGKILLed, and the parent releases their jobs the same way.

The release signal is SIGURG, chosen because nothing else claims it: SIGTERM is how billiard
terminates children in a cold shutdown, and billiard replaces the handlers of SIGTERM, SIGHUP,
SIGUSR1 and SIGUSR2 (with its own, which exits) after Celery's child initializer ran, when the
pool runs with threads (the embedded SQLite broker). SIGURG's default action is to ignore it,
so a child that has no handler yet is not killed by it either; the kernel sends it only for
out-of-band socket data, which nothing here uses.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from celery.signals import worker_init, worker_shutting_down

from service.jobs import state
from service.jobs.table import Job
from service.messaging import send_job
from service.settings import Settings, get_settings
from worker.sessions import job_session

logger = logging.getLogger(__name__)

#: How long a released job may take to reach its next step boundary before its child is killed.
RELEASE_GRACE_S = 5.0
RELEASE_SIGNAL = signal.SIGURG

_release_requested = threading.Event()
_worker: Any = None


class JobReleased(Exception):
    """Raised at a running job's step boundary once its worker is shutting down."""


# -- in a pool child ------------------------------------------------------------------------------


def install_child_handler() -> None:
    """Make ``RELEASE_SIGNAL`` ask this pool child's running job to stop at its next step."""
    signal.signal(RELEASE_SIGNAL, lambda signum, frame: _release_requested.set())


def release_requested() -> bool:
    """Whether this process was asked to hand its running job back."""
    return _release_requested.is_set()


# -- in the worker's parent -----------------------------------------------------------------------


@worker_init.connect
def _remember_worker(sender: Any = None, **_: Any) -> None:
    global _worker
    _worker = sender


@worker_shutting_down.connect
def _start_shutdown_clock(sig: str = "", how: str = "", **_: Any) -> None:
    # Runs inside Celery's signal handler: start the clock on a thread and return.
    if how != "Warm" or _worker is None:
        return
    threading.Thread(
        target=shutdown_clock, args=(_worker, get_settings()), name="spectral-shutdown", daemon=True
    ).start()


def _pool_children(worker: Any) -> list[int]:
    try:
        return [int(pid) for pid in worker.pool.info["processes"] if pid]
    except (AttributeError, KeyError, TypeError):
        return []


def _active_job_ids() -> list[str]:
    from celery.worker import state as worker_state

    return [str(request.args[0]) for request in list(worker_state.active_requests) if request.args]


def shutdown_clock(worker: Any, settings: Settings) -> None:
    """Steps 2 and 3 above, for the Celery ``worker`` whose warm shutdown just started."""
    window = settings.job_shutdown_s
    logger.warning(
        "shutting down: running jobs %s may go on for %g s, then are released",
        _active_job_ids(),
        window,
    )
    time.sleep(window)
    children = _pool_children(worker)
    if not _active_job_ids():
        return
    logger.warning("shutdown window over: releasing jobs %s", _active_job_ids())
    for pid in children:
        _signal(pid, RELEASE_SIGNAL)
    time.sleep(RELEASE_GRACE_S)
    jobs = _active_job_ids()
    if not jobs:
        return
    # Attempts read before the kill: the release below applies to the attempt that was killed.
    with job_session(settings) as session:
        attempts = {job_id: session.get(Job, job_id) for job_id in jobs}
        running = {
            job_id: (job.attempts, job.queue)
            for job_id, job in attempts.items()
            if job is not None and job.status == "running"
        }
    logger.error("jobs %s did not stop within %g s: killing pool children", jobs, RELEASE_GRACE_S)
    for pid in children:
        _signal(pid, signal.SIGKILL)
    _wait_gone(children, timeout=10)
    for job_id, (attempt, queue) in running.items():
        with job_session(settings) as session:
            released = state.release_job(session, job_id, attempt=attempt)
        if released:
            send_job(worker.app, job_id, queue)
            logger.warning("job %s released after its pool child was killed", job_id)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(_gone(pid) for pid in pids):
        time.sleep(0.05)
