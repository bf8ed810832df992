"""The API dies between recording a job and sending its message: the job still runs."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.e2e.chaos.conftest import ChaosStack

pytestmark = pytest.mark.timeout(300)


def test_api_killed_between_the_job_row_and_its_message(
    chaos_stack: Callable[..., ChaosStack],
) -> None:
    stack = chaos_stack()
    # The worker is up first: its start-up re-send cannot be what saves the job.
    stack.start_worker()
    before = stack.submit()
    api = stack.restart_api(SPECTRAL_TEST_CRASH_AFTER_JOB_ROW="true")
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{api}/prune", json=stack.body("percentile"), timeout=60)
    api.process.wait(timeout=30)
    assert api.process.returncode == 70, api.log_text()[-3000:]
    orphans = [job for job in stack.jobs().values() if job.id != before]
    assert len(orphans) == 1 and orphans[0].status == "queued"
    assert stack.redis.client().llen(stack.queue) == 0, "no message was sent"

    stack.restart_api()
    after = stack.submit()
    rows = stack.wait_terminal(timeout=90)
    assert {rows[job_id].status for job_id in (before, orphans[0].id, after)} == {"succeeded"}
    stack.check()
