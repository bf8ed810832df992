"""SIGTERM to a real worker process (not its group): its running job is released within
SPECTRAL_JOB_SHUTDOWN_S and taken by the next worker at once, or finishes within the window."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from tests.e2e.test_job_faults import Stack, make_stack  # noqa: F401  (the fixture)
from tests.support.http import get_job, versions, wait_for
from tests.support.worker import RunningWorker
from worker.shutdown import RELEASE_GRACE_S

pytestmark = pytest.mark.timeout(300)

# Long enough that 0.5 s after SIGTERM the job is still training; short enough to finish soon.
EPOCHS = 30
# Celery's own exit after the pool drained, on a loaded 2-core machine.
EXIT_MARGIN_S = 10.0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _terminate(worker: RunningWorker, window: float) -> float:
    """SIGTERM to the worker process alone (as Kubernetes sends it to PID 1); seconds to exit."""
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=window + RELEASE_GRACE_S + EXIT_MARGIN_S)
    return time.monotonic() - started


def _queued_messages(redis_url: str, queue: str) -> list[str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return [str(message) for message in client.lrange(queue, 0, -1)]


def test_sigterm_releases_the_running_job_and_the_next_worker_takes_it(
    make_stack: Callable[..., Stack],  # noqa: F811
    redis_url: str,
) -> None:
    # A long lease: the job can only come back by its release, never by lease recovery.
    stack = make_stack(SPECTRAL_BROKER_URL=redis_url, SPECTRAL_JOB_LEASE_S="600")
    queue = stack.env["SPECTRAL_DEFAULT_QUEUE"]
    first = stack.start_worker({**stack.env, "SPECTRAL_JOB_SHUTDOWN_S": "0.5"})
    job_id = stack.pretrain(epochs=EPOCHS)
    stack.wait_running(job_id)
    (child,) = first.child_pids()

    exit_s = _terminate(first, window=0.5)
    assert first.process.returncode == 0, first.log_text()[-3000:]
    assert not _alive(child), "the pool child outlived its worker"
    job = get_job(stack.api, job_id)
    assert job["status"] == "queued", job
    assert job["attempts"] == 0  # a release is not counted (service.jobs.state.release_job)
    assert "released by a worker shutting down" in job["step"]
    assert job["result"] is None and versions(stack.api, "digits") == [1]
    # Its message is back on the broker, for whichever worker comes next.
    assert any(job_id in message for message in _queued_messages(redis_url, queue))
    print(f"\nSIGTERM -> worker exited in {exit_s:.2f} s (window 0.5 s), job released")

    # The next worker runs it; SIGTERM while it runs, with a window it fits in: it finishes.
    second = stack.start_worker({**stack.env, "SPECTRAL_JOB_SHUTDOWN_S": "120"})
    running = wait_for(stack.api, job_id, statuses={"running", "succeeded"}, timeout=120)
    assert running["attempts"] == 1
    (second_child,) = second.child_pids()
    exit_s = _terminate(second, window=120)
    exited_at = datetime.now(UTC)
    assert second.process.returncode == 0
    assert not _alive(second_child)
    job = get_job(stack.api, job_id)
    # It exited when its job ended, not at the end of the window.
    finished_at = datetime.fromisoformat(job["finished_at"])
    assert (exited_at - finished_at).total_seconds() < EXIT_MARGIN_S
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert versions(stack.api, "digits") == [1, 2]
    assert job["result"]["version"] == 2
    print(f"SIGTERM during the job -> it finished and the worker exited in {exit_s:.2f} s")


def _broker_messages(env: dict[str, str]) -> list[str]:
    """Payloads waiting in the embedded SQLite broker (kombu's ``kombu_message`` table)."""
    broker = Path(env["SPECTRAL_DATA_DIR"]) / "broker.db"
    with closing(sqlite3.connect(broker)) as connection:
        rows = connection.execute("SELECT payload FROM kombu_message WHERE visible").fetchall()
    return [str(row[0]) for row in rows]


def test_sigterm_releases_the_running_job_on_the_embedded_broker(
    make_stack: Callable[..., Stack],  # noqa: F811
) -> None:
    """`spectral serve`'s broker: its pool runs with threads, where billiard takes over more
    signals in the children (the release signal must not be one of them)."""
    stack = make_stack(SPECTRAL_JOB_LEASE_S="600")
    worker = stack.start_worker({**stack.env, "SPECTRAL_JOB_SHUTDOWN_S": "0.5"})
    job_id = stack.pretrain(epochs=EPOCHS)
    stack.wait_running(job_id)
    (child,) = worker.child_pids()
    exit_s = _terminate(worker, window=0.5)
    assert worker.process.returncode == 0, worker.log_text()[-3000:]
    assert not _alive(child)
    assert "did not stop" not in worker.log_text()  # released at a step, not killed
    job = get_job(stack.api, job_id)
    assert job["status"] == "queued" and job["attempts"] == 0, job
    assert any(job_id in message for message in _broker_messages(stack.env))
    print(f"\nembedded broker: SIGTERM -> worker exited in {exit_s:.2f} s, job released")
