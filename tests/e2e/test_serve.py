"""`spectral serve`: the API plus one real embedded Celery worker on the SQLite broker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.api import REPO_ROOT, child_env
from tests.support.http import submit_ok, upload_model, versions, wait_for

pytestmark = pytest.mark.timeout(300)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_serve(tmp_path: Path, port: int) -> tuple[subprocess.Popen[bytes], Path, int]:
    """Starts `spectral serve` in a session of its own and waits until it is ready.

    Returns the process, its log file and the embedded worker's pid.
    """
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"]
            + ["--data-dir", str(tmp_path / "data"), "--port", str(port)],
            cwd=REPO_ROOT,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while True:
        if serve.poll() is not None:
            raise AssertionError(log_path.read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            os.killpg(serve.pid, signal.SIGKILL)
            raise AssertionError(log_path.read_text()[-3000:])
        time.sleep(0.2)
    match = re.search(r"embedded worker pid (\d+)", log_path.read_text())
    assert match, log_path.read_text()
    return serve, log_path, int(match.group(1))


def test_serve_runs_jobs_with_its_embedded_worker(
    tmp_path: Path, free_port: int, digits_model_path: Path
) -> None:
    serve, log_path, worker_pid = _start_serve(tmp_path, free_port)
    api = f"http://127.0.0.1:{free_port}"
    try:
        assert _alive(worker_pid)

        upload_model(api, "digits", digits_model_path)
        job_id = submit_ok(api, {"model_id": "digits", "percentile": 50})
        job = wait_for(api, job_id, timeout=180)
        assert job["status"] == "succeeded", (job, log_path.read_text()[-3000:])
        assert versions(api, "digits") == [1, 2]
        assert (tmp_path / "data" / "broker.db").exists()  # the embedded SQLite broker
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            raise
    deadline = time.monotonic() + 10
    while _alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker_pid), "serve left its worker running"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_serve_alone_stops_its_worker_and_pool(tmp_path: Path, free_port: int) -> None:
    """SIGTERM (what docker stop, systemd and Kubernetes send) reaches only the serve process,
    not its group: the API and the embedded worker with its pool children must all go."""
    serve, log_path, worker_pid = _start_serve(tmp_path, free_port)
    try:
        # The worker leads its own process group; its pool children share it.
        deadline = time.monotonic() + 60
        while "ready" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _group_alive(worker_pid)

        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _group_alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(worker_pid), "serve left its worker or pool children running"
