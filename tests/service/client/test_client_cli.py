"""The ``spectral`` client commands against a real API (no worker: jobs stay queued): exit
codes, ``--json`` on stdout with messages on stderr, waiting, Ctrl-C."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.api import REPO_ROOT, RunningApi, child_env, find_free_port


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and a Python started so never raises
    # KeyboardInterrupt: the CLI under test must see Ctrl-C whatever launched the suite.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spectral(
    api: str, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO_ROOT,
        env=child_env({"SPECTRAL_URL": api, "SPECTRAL_RETRY_BACKOFF_S": "0.05", **env}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def pushed(api: RunningApi, digits_model_path: Path) -> str:
    result = spectral(api, "push", str(digits_model_path), "--name", "cli", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 1  # stdout is the JSON document alone
    return "cli"


def test_json_documents_and_text(api: RunningApi, pushed: str) -> None:
    listed = spectral(api, "models", "list", "--json")
    assert listed.returncode == 0
    assert "cli" in [model["id"] for model in json.loads(listed.stdout)["data"]]
    shown = spectral(api, "models", "show", pushed)
    assert shown.returncode == 0 and "cli" in shown.stdout and "version" in shown.stdout
    moved = spectral(api, "aliases", "set", pushed, "staging", "1", "--json")
    assert json.loads(moved.stdout) == {"model_id": "cli", "alias": "staging", "version": 1}
    history = json.loads(spectral(api, "aliases", "history", pushed, "staging", "--json").stdout)
    assert [e["reason"] for e in history["data"]] == ["set"] and history["count"] == 1


def test_4xx_exits_2_with_the_servers_message(api: RunningApi, pushed: str) -> None:
    missing = spectral(api, "models", "show", "nope", "--json")
    assert missing.returncode == 2
    assert json.loads(missing.stdout)["error"]["code"] == "model_not_found"
    assert "nope" in missing.stderr and "Traceback" not in missing.stderr

    conflict = spectral(api, "aliases", "set", pushed, "staging", "1", "--if-version", "7")
    assert conflict.returncode == 2
    assert "alias_conflict" in conflict.stderr and "points at version 1 now" in conflict.stderr

    # Refused before sending: the server's own request class, the same words as its 422.
    both = spectral(
        api, "jobs", "submit", pushed, "--version", "1", "--alias", "staging", "--percentile", "10"
    )
    assert both.returncode == 2 and "either version or alias" in both.stderr
    lone = spectral(api, "jobs", "submit", pushed, "--percentile", "10", "--promote", "prod")
    assert lone.returncode == 2 and "--max-drop-percent" in lone.stderr
    usage = spectral(api, "jobs", "submit")  # click's own usage error
    assert usage.returncode == 2


def test_unreachable_server_exits_4_after_retries() -> None:
    started = time.monotonic()
    down = spectral(
        f"http://127.0.0.1:{find_free_port()}", "models", "list", "--json", SPECTRAL_RETRIES="2"
    )
    assert down.returncode == 4, down.stderr
    error = json.loads(down.stdout)["error"]
    assert error["code"] == "server_unavailable" and error["details"]["attempts"] == 3
    assert "cannot reach" in down.stderr and "Traceback" not in down.stderr
    assert time.monotonic() - started < 30


def test_wait_timeout_exits_3_and_the_job_goes_on(api: RunningApi, pushed: str) -> None:
    result = spectral(
        api, "jobs", "submit", pushed, "--percentile", "20", "--wait", "--timeout", "1", "--json"
    )
    assert result.returncode == 3, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "wait_timeout"
    job_id = error["details"]["job_id"]
    assert f"job {job_id}: queued" in result.stderr  # plain progress lines off a terminal
    assert httpx.get(f"{api}/jobs/{job_id}").json()["status"] == "queued"

    shown = spectral(api, "jobs", "show", job_id)
    assert shown.returncode == 0 and job_id in shown.stdout and "queued" in shown.stdout
    cancelled = spectral(api, "jobs", "cancel", job_id, "--json")
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    waited = spectral(api, "jobs", "wait", job_id)
    assert waited.returncode == 3 and "cancelled" in waited.stderr


def test_ctrl_c_with_cancel_on_interrupt_cancels_the_job(api: RunningApi, pushed: str) -> None:
    submitted = spectral(api, "jobs", "submit", pushed, "--percentile", "25")
    job_id = submitted.stdout.strip()
    assert submitted.returncode == 0 and len(job_id) == 32, submitted.stderr
    waiting = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "jobs", "wait", job_id, "--cancel-on-interrupt"],
        cwd=REPO_ROOT,
        env=child_env({"SPECTRAL_URL": api}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 30
    while "queued" not in (line := waiting.stderr.readline()):  # it is polling
        assert line and time.monotonic() < deadline
    waiting.send_signal(signal.SIGINT)
    _, stderr = waiting.communicate(timeout=30)
    assert waiting.returncode == 3, stderr
    assert "cancel requested" in stderr
    assert httpx.get(f"{api}/jobs/{job_id}").json()["status"] == "cancelled"


def test_ctrl_c_without_a_terminal_leaves_the_job(api: RunningApi, pushed: str) -> None:
    job_id = spectral(api, "jobs", "submit", pushed, "--percentile", "26").stdout.strip()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "jobs", "wait", job_id],
        cwd=REPO_ROOT,
        env=child_env({"SPECTRAL_URL": api}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,  # nobody to ask: the job is left alone
        text=True,
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 30
    while "queued" not in (line := waiting.stderr.readline()):
        assert line and time.monotonic() < deadline
    waiting.send_signal(signal.SIGINT)
    _, stderr = waiting.communicate(timeout=30)
    assert waiting.returncode == 3 and f"spectral jobs cancel {job_id}" in stderr
    assert httpx.get(f"{api}/jobs/{job_id}").json()["status"] == "queued"
    httpx.post(f"{api}/jobs/{job_id}/cancel")


def test_on_a_terminal_wait_draws_a_bar_and_ctrl_c_asks_before_cancelling(
    api: RunningApi, pushed: str
) -> None:
    job_id = spectral(api, "jobs", "submit", pushed, "--percentile", "27").stdout.strip()
    controller, terminal = pty.openpty()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "jobs", "wait", job_id],
        cwd=REPO_ROOT,
        env=child_env({"SPECTRAL_URL": api, "TERM": "xterm"}),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )
    os.close(terminal)
    seen = b""

    def read_until(marker: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while marker not in seen:
            assert time.monotonic() < deadline, seen[-2000:]
            if select.select([controller], [], [], 0.5)[0]:
                seen += os.read(controller, 65536)

    try:
        read_until(b"queued")
        read_until("━".encode())  # rich's bar, only on a terminal
        os.killpg(waiting.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's process group
        read_until(b"Cancel job")
        os.write(controller, b"y\n")
        read_until(b"cancel requested")
        assert waiting.wait(timeout=30) == 3
    finally:
        if waiting.poll() is None:
            waiting.kill()
        os.close(controller)
    assert httpx.get(f"{api}/jobs/{job_id}").json()["status"] == "cancelled"
