"""The ``spectral`` command line starts a working API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from api_process import REPO_ROOT, find_free_port


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail(f"CLI server did not become healthy:\n{log.read_text()[-3000:]}")


def test_help_lists_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "api" in result.stdout


def test_api_command_serves_on_the_given_port(tmp_path: Path) -> None:
    port = find_free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECTRAL_")}
    env.update({"SPECTRAL_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO_ROOT)})
    log = tmp_path / "cli.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "api", "--host", "127.0.0.1"]
            + ["--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process, log)
        assert httpx.get(f"{url}/models", timeout=10).json() == {"data": [], "count": 0}
        assert (tmp_path / "data" / "registry.db").is_file()
    finally:
        process.terminate()
        process.wait(timeout=30)
