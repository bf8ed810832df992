"""Fixtures shared by every test directory: digits data, a trained Spectral model file, free
ports, a throw-away PostgreSQL database, and a factory that runs the real API in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# pytest puts tests/ on sys.path for this conftest, where tests/spectral and tests/service would
# shadow the real packages as namespace packages; the repository root must come first.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
POSTGRES_ADMIN_URL = "postgresql+psycopg://127.0.0.1:5432/test"
API_START_TIMEOUT_S = 120.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    # Lets fixtures see at teardown whether the test failed (to show server logs then).
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(
        getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


# -- data and models --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits: ``x`` float32 in [0, 1] of shape (1797, 64), ``y`` int labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


def train_digits_model(
    x: np.ndarray, y: np.ndarray, *, hidden: tuple[int, int] = (32, 16), epochs: int = 3
) -> Any:
    """64 -> Spectral -> Spectral -> Dense(10, softmax), trained briefly (seeded)."""
    import keras

    from spectral import Spectral

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            Spectral(hidden[0], activation="relu"),
            Spectral(hidden[1], activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def digits_model_path(
    tmp_path_factory: pytest.TempPathFactory, digits_data: tuple[np.ndarray, np.ndarray]
) -> Path:
    """A small trained digits model with two Spectral layers, saved as a (compiled) .keras file."""
    path = tmp_path_factory.mktemp("models") / "digits.keras"
    train_digits_model(*digits_data).save(path)
    return path


# -- infrastructure ---------------------------------------------------------------------------


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> int:
    return find_free_port()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL database for this test session, dropped afterwards.

    Skips (with the reason) only when the PostgreSQL at 127.0.0.1:5432 cannot be reached.
    """
    from sqlalchemy import create_engine, text

    name = f"spectral_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # depends on the machine: CI always has PostgreSQL
        admin.dispose()
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    try:
        yield f"postgresql+psycopg://127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class RunningApi(str):
    """The base URL of a running API server, carrying its process, data dir and log file."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def launch_api(env: dict[str, str] | None, work_dir: Path) -> RunningApi:
    """Starts ``uvicorn service.app:create_app --factory`` on a free port; waits for /healthz.

    ``env`` overrides the environment (``SPECTRAL_*`` variables of the calling shell are dropped
    first); the data dir defaults to ``work_dir/data``. The log goes to ``work_dir/api.log``.
    """
    port = find_free_port()
    data_dir = work_dir / "data"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SPECTRAL_")}
    child_env.update(
        {
            "SPECTRAL_DATA_DIR": str(data_dir),
            "PYTHONPATH": str(REPO_ROOT),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    child_env.update(env or {})
    data_dir = Path(child_env["SPECTRAL_DATA_DIR"])
    log_path = work_dir / "api.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "service.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=REPO_ROOT,
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = RunningApi(f"http://127.0.0.1:{port}")
    api.process, api.data_dir, api.log_path, api.env = process, data_dir, log_path, child_env
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


@pytest.fixture
def start_api(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., RunningApi]]:
    """Factory: ``start_api(env: dict | None = None) -> base_url`` (a `RunningApi`).

    Each call gets its own data dir under ``tmp_path`` unless ``env`` sets SPECTRAL_DATA_DIR.
    Servers are terminated at teardown; a failed test shows their logs.
    """
    started: list[RunningApi] = []

    def start(env: dict[str, str] | None = None) -> RunningApi:
        work_dir = tmp_path / f"api-{len(started)}"
        work_dir.mkdir()
        api = launch_api(env, work_dir)
        started.append(api)
        return api

    yield start
    for api in started:
        stop_api(api)
    if _failed(request):
        for api in started:
            sys.stdout.write(f"\n----- API log {api.log_path} -----\n{api.log_text()[-6000:]}\n")
