"""Fixtures for end-to-end job tests: real worker processes next to a real API server."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support.worker import RunningWorker, launch_worker

# A Redis database of its own, so these tests never read another suite's keys.
REDIS_DB = 11


@pytest.fixture
def redis_url() -> str:
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:  # depends on the machine: CI always has Redis
        pytest.skip(f"Redis at 127.0.0.1:6379 is not reachable: {exc}")
    return url


@pytest.fixture
def job_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """SPECTRAL_* settings shared by the API and the workers of one test: a queue of its own,
    a short heartbeat and lease so lost jobs are noticed within seconds."""
    queue = f"e2e-{uuid.uuid4().hex[:10]}"
    yield {
        "SPECTRAL_DATA_DIR": str(tmp_path / "data"),
        "SPECTRAL_DEFAULT_QUEUE": queue,
        "SPECTRAL_BROKER_POLLING_INTERVAL_S": "0.05",
        "SPECTRAL_JOB_HEARTBEAT_S": "0.5",
        "SPECTRAL_JOB_LEASE_S": "3",
        "SPECTRAL_EMBEDDED_WORKER": "false",
    }
    try:  # drop this test's Redis queue keys (and the duplicates recovery may have sent)
        client = redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}")
        keys = list(client.scan_iter(f"*{queue}*"))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass


@pytest.fixture
def start_worker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., RunningWorker]]:
    """Factory: ``start_worker(env, queues=None, wait=True) -> RunningWorker``; queues default
    to the default queue of ``env``."""
    started: list[RunningWorker] = []

    def start(
        env: dict[str, str], queues: list[str] | None = None, wait: bool = True
    ) -> RunningWorker:
        names = queues or [env["SPECTRAL_DEFAULT_QUEUE"]]
        worker = launch_worker(env, tmp_path / f"worker-{len(started)}.log", names)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
    failed = any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
        for when in ("setup", "call")
    )
    if failed:
        for worker in started:
            sys.stdout.write(f"\n----- worker log {worker.log_path} -----\n")
            sys.stdout.write(worker.log_text()[-6000:] + "\n")
