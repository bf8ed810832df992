"""The chaos stack: a real API and real workers on a PRIVATE Redis and PostgreSQL, which the
tests restart, kill and starve (the machine's shared servers are never touched).

``SPECTRAL_CHAOS_LONG=1`` runs the long mode: more jobs and more faults per scenario.
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from service.db import Database
from service.jobs.table import TERMINAL_STATUSES, Job
from service.settings import Settings
from tests.e2e.chaos.invariants import Snapshot, check_invariants, snapshot
from tests.support.api import RunningApi, stop_api
from tests.support.chaos import PrivatePostgres, PrivateRedis, launch_worker
from tests.support.http import submit_ok, upload_dataset, upload_model
from tests.support.worker import RunningWorker

LONG = os.environ.get("SPECTRAL_CHAOS_LONG", "") not in ("", "0", "false")
SEED = int(os.environ.get("SPECTRAL_CHAOS_SEED", "20261205"))


def scale(short: int, long: int) -> int:
    """How many jobs (or faults) a scenario uses: ``short`` by default, ``long`` in long mode."""
    return long if LONG else short


@pytest.fixture
def chaos_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def chaos_postgres() -> Iterator[PrivatePostgres]:
    try:
        cluster = PrivatePostgres()
        cluster.init()
    except (RuntimeError, OSError, KeyError) as exc:  # no binaries, or no postgres user
        pytest.skip(f"cannot create a private PostgreSQL cluster here: {exc}")
    yield cluster
    cluster.destroy()


@dataclass
class ChaosStack:
    """One API, its workers, and the private servers they share; every job of the test."""

    env: dict[str, str]
    work_dir: Path
    redis: PrivateRedis
    postgres: PrivatePostgres
    start_api: Callable[..., RunningApi]
    rng: random.Random
    api: RunningApi | None = None
    dataset_id: str = ""
    workers: list[RunningWorker] = field(default_factory=list)
    _db: Database | None = None

    @property
    def settings(self) -> Settings:
        return Settings(
            data_dir=Path(self.env["SPECTRAL_DATA_DIR"]),
            database_url=self.env["SPECTRAL_DATABASE_URL"],
            artifact_url=self.env.get("SPECTRAL_ARTIFACT_URL"),
        )

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings)
        return self._db

    @property
    def queue(self) -> str:
        return self.env["SPECTRAL_DEFAULT_QUEUE"]

    def log_paths(self) -> list[Path]:
        return [worker.log_path for worker in self.workers]

    # -- processes ------------------------------------------------------------------------------

    def restart_api(self, **overrides: str) -> RunningApi:
        if self.api is not None:
            stop_api(self.api)
        self.api = self.start_api({**self.env, **overrides})
        return self.api

    def start_worker(
        self, *, concurrency: int = 1, wait: bool = True, **overrides: str
    ) -> RunningWorker:
        log = self.work_dir / f"worker-{len(self.workers)}.log"
        worker = launch_worker(
            {**self.env, **overrides}, log, [self.queue], concurrency=concurrency
        )
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def running_workers(self) -> list[RunningWorker]:
        return [worker for worker in self.workers if worker.process.poll() is None]

    # -- jobs -----------------------------------------------------------------------------------

    def body(self, kind: str | None = None) -> dict[str, Any]:
        """A small, fast job: percentile or metric search (seeded choice), or ``kind``."""
        kind = kind or self.rng.choice(["percentile", "metric"])
        if kind == "percentile":
            return {
                "model_id": "digits",
                "method": "percentile",
                "percentile": 20 + 5 * self.rng.randrange(8),
            }
        if kind == "metric":
            return {
                "model_id": "digits",
                "method": "metric",
                "dataset_id": self.dataset_id,
                "max_delta_percent": 5,
                "percentile_step": 25,
            }
        raise ValueError(kind)

    def long_body(self, epochs: int) -> dict[str, Any]:
        """A job that trains for ``epochs``: long enough to be hit while it runs."""
        return {
            "model_id": "digits",
            "method": "pretrain",
            "dataset_id": self.dataset_id,
            "percentile": 30,
            "epochs": epochs,
        }

    def submit(self, body: dict[str, Any] | None = None) -> str:
        assert self.api is not None
        return submit_ok(self.api, body or self.body())

    def submit_batch(self, count: int) -> list[str]:
        return [self.submit() for _ in range(count)]

    def jobs(self) -> dict[str, Job]:
        """Every job row, read directly (waiting out a database restart)."""

        def read(session: Any) -> dict[str, Job]:
            return {job.id: job for job in session.scalars(select(Job))}

        return self.db.transaction(read, retry_s=60)

    def wait(
        self,
        predicate: Callable[[dict[str, Job]], bool],
        what: str,
        timeout: float,
    ) -> dict[str, Job]:
        """Polls the job rows until ``predicate`` holds; fails with the rows and logs."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.jobs()
            if predicate(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s\n{self.dump()}")
            time.sleep(0.2)

    def wait_running(self, job_id: str, timeout: float = 90) -> None:
        """Until the job is inside the library (past loading), where a fault hits it mid-run."""
        self.wait(
            lambda rows: rows[job_id].status == "running" and rows[job_id].progress >= 0.1,
            f"job {job_id} running",
            timeout,
        )

    def wait_terminal(self, timeout: float) -> dict[str, Job]:
        return self.wait(
            lambda rows: all(job.status in TERMINAL_STATUSES for job in rows.values()),
            "every job terminal",
            timeout,
        )

    def check(self) -> Snapshot:
        """The shared invariants (`tests.e2e.chaos.invariants`)."""
        return check_invariants(self.settings, self.log_paths())

    def dump(self) -> str:
        try:
            return snapshot(self.settings, self.log_paths()).dump()
        except Exception as exc:  # the database itself may be what is broken
            return f"(no snapshot: {exc})"

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()  # nothing to drain: the test has checked what it needed
        if self.api is not None:
            stop_api(self.api)
        if self._db is not None:
            self._db.dispose()


@pytest.fixture
def chaos_stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    chaos_redis: PrivateRedis,
    chaos_postgres: PrivatePostgres,
    start_api: Callable[..., RunningApi],
    suite_store_env: dict[str, str],
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> Iterator[Callable[..., ChaosStack]]:
    """Factory: ``chaos_stack(**SPECTRAL_overrides) -> ChaosStack``, the API up with the digits
    model (version 1) and a small digits dataset uploaded, and no worker yet."""
    stacks: list[ChaosStack] = []

    def make(**overrides: str) -> ChaosStack:
        env = {
            **suite_store_env,
            "SPECTRAL_DATA_DIR": str(tmp_path / "data"),
            "SPECTRAL_DATABASE_URL": chaos_postgres.url,
            "SPECTRAL_BROKER_URL": chaos_redis.url,
            "SPECTRAL_DEFAULT_QUEUE": f"chaos-{uuid.uuid4().hex[:8]}",
            "SPECTRAL_EMBEDDED_WORKER": "false",
            "SPECTRAL_JOB_HEARTBEAT_S": "0.5",
            "SPECTRAL_JOB_LEASE_S": "4",
            "SPECTRAL_JOB_RESEND_QUEUED_S": "3",
            "SPECTRAL_JOB_TRANSIENT_BACKOFF_S": "0.5",
            "SPECTRAL_DB_RETRY_S": "30",
            **overrides,
        }
        stack = ChaosStack(
            env, tmp_path, chaos_redis, chaos_postgres, start_api, random.Random(SEED)
        )
        stacks.append(stack)
        api = stack.restart_api()
        upload_model(api, "digits", digits_model_path)
        x, y = digits_data
        stack.dataset_id = upload_dataset(api, x[:300], y[:300])
        return stack

    yield make
    failed = any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
        for when in ("setup", "call")
    )
    for stack in stacks:
        stack.close()
        if failed:
            for worker in stack.workers:
                sys.stdout.write(f"\n----- worker log {worker.log_path} -----\n")
                sys.stdout.write(worker.log_text()[-5000:] + "\n")


def cancel(api: str, job_id: str) -> dict[str, Any]:
    response = httpx.post(f"{api}/jobs/{job_id}/cancel", timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())
