"""Runs the real API for tests: ``spectral api`` (the project's own launcher) in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
API_START_TIMEOUT_S = 120.0


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server or worker child: this checkout first on the path, the
    calling shell's ``SPECTRAL_*`` variables dropped, then ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPECTRAL_")}
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    base.update(
        {
            "PYTHONPATH": os.pathsep.join(paths),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
            "SPECTRAL_LOG_LEVEL": "WARNING",
            "COLUMNS": "200",
        }
    )
    return {**base, **(env or {})}


class RunningApi(str):
    """The base URL of a running API server, carrying its process, data dir and log file."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def launch_api(env: dict[str, str] | None, work_dir: Path) -> RunningApi:
    """Starts ``spectral api`` on a free port and waits for /healthz.

    ``env`` overrides the environment; the data dir defaults to ``work_dir/data``. The log goes
    to ``work_dir/api.log``.
    """
    port = find_free_port()
    environment = child_env({"SPECTRAL_DATA_DIR": str(work_dir / "data"), **(env or {})})
    log_path = work_dir / "api.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "api", "--host", "127.0.0.1"]
            + ["--port", str(port)],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = RunningApi(f"http://127.0.0.1:{port}")
    api.process, api.log_path, api.env = process, log_path, environment
    api.data_dir = Path(environment["SPECTRAL_DATA_DIR"])
    deadline = time.monotonic() + API_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"API exited with {process.returncode}:\n{api.log_text()[-4000:]}")
        try:
            if httpx.get(f"{api}/healthz", timeout=2).status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_api(api)
    raise RuntimeError(f"API did not become healthy in time:\n{api.log_text()[-4000:]}")


def stop_api(api: RunningApi) -> None:
    if api.process.poll() is None:
        api.process.terminate()
        try:
            api.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            api.process.kill()
            api.process.wait(timeout=15)
