"""Redis, the broker, restarted under the jobs (losing every message it held), and a job that
outlasts Redis's visibility timeout."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.e2e.chaos.conftest import ChaosStack, scale

pytestmark = pytest.mark.timeout(300)


def test_redis_restarted_with_jobs_queued_and_running(
    chaos_stack: Callable[..., ChaosStack],
) -> None:
    stack = chaos_stack()
    worker = stack.start_worker()
    # A long job runs; more wait behind it in Redis. The restart loses both the queued messages
    # and the running job's unacknowledged one, while the worker stays up: only the rows know.
    first_long = stack.submit(stack.long_body(epochs=scale(20, 60)))
    stack.wait_running(first_long)
    queued = stack.submit_batch(scale(4, 10))
    assert stack.redis.client().llen(stack.queue) == len(queued)
    stack.redis.restart()
    assert stack.redis.client().llen(stack.queue) == 0

    # Again, once the queue drained, while another long job runs.
    stack.wait(
        lambda rows: all(rows[job_id].status == "succeeded" for job_id in queued),
        "the queued jobs whose messages Redis lost",
        timeout=scale(120, 300),
    )
    second_long = stack.submit(stack.long_body(epochs=scale(20, 60)))
    stack.wait_running(second_long)
    stack.redis.restart()
    later = stack.submit_batch(scale(2, 6))

    rows = stack.wait_terminal(timeout=scale(120, 400))
    jobs = [first_long, *queued, second_long, *later]
    assert {rows[job_id].status for job_id in jobs} == {"succeeded"}, stack.dump()
    assert worker.process.poll() is None, "the worker survived both restarts"
    snap = stack.check()
    # Messages sent again from the rows ran each job once: no duplicate became a second attempt.
    assert all(job["attempts"] == 1 for job in snap.jobs), snap.dump()


def test_job_longer_than_the_visibility_timeout_runs_once(
    chaos_stack: Callable[..., ChaosStack],
) -> None:
    stack = chaos_stack(SPECTRAL_BROKER_VISIBILITY_TIMEOUT_S="2")
    # Two pool children: while one runs the job, the other is free to take the re-delivery.
    worker = stack.start_worker(concurrency=2)
    job_id = stack.submit(stack.long_body(epochs=scale(40, 120)))
    stack.wait_running(job_id)
    rows = stack.wait_terminal(timeout=scale(150, 400))
    assert rows[job_id].status == "succeeded" and rows[job_id].attempts == 1
    stack.check()
    # Redis did re-deliver the running job's message (else this test proves nothing), and the
    # state machine turned the duplicate away.
    duplicates = re.findall(rf"job {job_id} not claimed \(status (\w+)\)", worker.log_text())
    assert duplicates, worker.log_text()[-4000:]
    assert set(duplicates) <= {"running", "succeeded"}
