"""Workers SIGKILLed at random (seeded) moments across a batch of jobs, and cancel requests
made while no worker runs at all."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from service.jobs.table import TERMINAL_STATUSES
from tests.e2e.chaos.conftest import SEED, ChaosStack, cancel, scale

pytestmark = pytest.mark.timeout(400)


def test_workers_sigkilled_at_random_moments(chaos_stack: Callable[..., ChaosStack]) -> None:
    rng = random.Random(SEED)
    # Enough attempts that three kills of the same job still leave it one to succeed.
    stack = chaos_stack(SPECTRAL_JOB_MAX_ATTEMPTS="5")
    jobs = stack.submit_batch(scale(20, 60))
    stack.start_worker()
    stack.start_worker(wait=False)
    kills = 0
    deadline = time.monotonic() + scale(150, 600)
    while kills < scale(4, 15) and time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 6.0))
        alive = stack.running_workers()
        rows = stack.jobs()
        if all(rows[job_id].status in TERMINAL_STATUSES for job_id in jobs):
            break
        if len(alive) > 1:
            rng.choice(alive).kill()
            kills += 1
        if len(stack.running_workers()) < 2:
            stack.start_worker(wait=False)
    rows = stack.wait_terminal(timeout=scale(180, 600))
    assert kills >= 2, f"only {kills} kills happened: the test did not test much"
    statuses = {rows[job_id].status for job_id in jobs}
    assert statuses == {"succeeded"}, stack.dump()
    snap = stack.check()
    assert sum(job["attempts"] for job in snap.jobs) >= len(jobs)


def test_cancel_while_no_worker_runs(chaos_stack: Callable[..., ChaosStack]) -> None:
    stack = chaos_stack()
    assert stack.api is not None
    # Queued jobs, never touched by a worker: cancelled at once.
    queued = stack.submit_batch(4)
    for job_id in queued[:2]:
        assert cancel(stack.api, job_id)["status"] == "cancelled"
    # A running job whose worker died: the cancel is a request nobody reads yet.
    worker = stack.start_worker()
    running = stack.submit(stack.long_body(epochs=200))
    stack.wait_running(running)
    worker.kill()
    answer = cancel(stack.api, running)
    assert answer["status"] == "running" and answer["cancel_requested"] is True
    # The next worker finds the lost job cancelled, not re-run, and runs only what is left.
    stack.start_worker()
    rows = stack.wait_terminal(timeout=120)
    assert rows[running].status == "cancelled" and rows[running].attempts == 1
    assert [rows[job_id].status for job_id in queued] == ["cancelled"] * 2 + ["succeeded"] * 2
    assert [rows[job_id].attempts for job_id in queued[:2]] == [0, 0]
    stack.check()
