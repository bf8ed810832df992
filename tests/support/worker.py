"""Real worker process groups, started with the project's own launcher (``python -m worker``),
as the end-to-end tests start and kill them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from service.cli import worker_command
from tests.support.api import REPO_ROOT, child_env

WORKER_READY_TIMEOUT_S = 120.0


class RunningWorker:
    """A ``celery worker`` process group started for a test."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = WORKER_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_text()[-4000:]}")
            # The child logs this after importing TensorFlow, so the first job starts warm.
            if "pool child ready" in self.log_text():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in time:\n{self.log_text()[-4000:]}")

    def child_pids(self) -> list[int]:
        """Pids of the pool children that reported ready, oldest first."""
        return [int(pid) for pid in re.findall(r"pool child ready: pid (\d+)", self.log_text())]

    def kill(self) -> None:
        """SIGKILL the whole group: the worker and its pool children die mid-job."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()  # warm shutdown
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


def launch_worker(
    env: dict[str, str], log_path: Path, queues: Sequence[str] | None = None
) -> RunningWorker:
    """Starts a one-process worker for the ``SPECTRAL_*`` settings in ``env`` (on ``queues``,
    default the settings' own), in its own process group, logging to ``log_path``."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            worker_command(queues, concurrency=1),
            cwd=REPO_ROOT,
            env=child_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return RunningWorker(process, log_path)
