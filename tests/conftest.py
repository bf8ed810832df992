"""Fixtures shared by every test directory: digits data, a trained Spectral model file, free
ports, a throw-away PostgreSQL database, and a factory that runs the real API in a subprocess."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.api import RunningApi, find_free_port, launch_api, stop_api

POSTGRES_ADMIN_URL = "postgresql+psycopg://127.0.0.1:5432/test"


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
