"""PostgreSQL restarted (immediate stop: a crash) while a job runs: the worker waits out the
outage, reconnects, and the job ends as if nothing happened."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.chaos.conftest import ChaosStack, scale

pytestmark = pytest.mark.timeout(300)


def test_postgres_restarted_while_a_job_runs(chaos_stack: Callable[..., ChaosStack]) -> None:
    stack = chaos_stack()
    worker = stack.start_worker()
    job_id = stack.submit(stack.long_body(epochs=scale(25, 60)))
    behind = stack.submit_batch(scale(2, 6))
    for _ in range(scale(1, 3)):
        stack.wait_running(job_id)
        # Down for longer than a heartbeat and several progress steps: the job's writes fail
        # in that window and must be retried, not turned into a failed job.
        stack.postgres.restart(down_s=3.0)
    rows = stack.wait_terminal(timeout=scale(120, 400))
    assert rows[job_id].status == "succeeded", stack.dump()
    assert rows[job_id].attempts == 1, "the outage did not cost an attempt"
    assert {rows[other].status for other in behind} == {"succeeded"}
    assert worker.process.poll() is None
    # The outage was felt (else this test proves nothing) and waited out.
    assert "database unreachable" in worker.log_text(), worker.log_text()[-4000:]
    stack.check()
