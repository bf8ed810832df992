"""Fixtures shared by every test directory: digits data, a trained Spectral model file, free
ports, a migrated registry database on SQLite or PostgreSQL, and a factory that runs the real
API in a subprocess."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.db import Database, upgrade_database
from service.settings import Settings
from tests.support.api import RunningApi, find_free_port, launch_api, stop_api
from tests.support.digits import build_digits_model, digits
from tests.support.s3 import (  # noqa: F401 (fixtures)
    _artifacts_in_suite_bucket,
    _suite_bucket,
    add_store_option,
    module_store_env,
    s3_env,
    s3_server,
    suite_store_env,
)

POSTGRES_ADMIN_URL = "postgresql+psycopg://127.0.0.1:5432/test"


def pytest_addoption(parser: pytest.Parser) -> None:
    # --artifact-store=s3: every test's artifacts in a moto S3 server (tests/support/s3.py).
    add_store_option(parser)


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
    """sklearn's 8x8 digits (`tests.support.digits.digits`)."""
    return digits()


@pytest.fixture(scope="session")
def digits_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained digits model with two Spectral layers, saved as a (compiled) .keras file."""
    path = tmp_path_factory.mktemp("models") / "digits.keras"
    build_digits_model().save(path)
    return path


@pytest.fixture(scope="session")
def model_bytes(digits_model_path: Path) -> bytes:
    """The same digits model as .keras bytes."""
    return digits_model_path.read_bytes()


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


@pytest.fixture(params=["sqlite", "postgresql"])
def job_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings with a migrated database, on both backends the service supports.

    PostgreSQL is the session's shared test database, so each test gets a queue of its own and
    looks only at its own jobs.
    """
    database_url = (
        request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    )
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        default_queue=f"test-{uuid.uuid4().hex[:10]}",
    )
    upgrade_database(settings)
    return settings


@pytest.fixture
def db(job_settings: Settings) -> Iterator[Database]:
    database = Database(job_settings)
    yield database
    database.dispose()


@pytest.fixture
def start_api(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    suite_store_env: dict[str, str],  # noqa: F811
) -> Iterator[Callable[..., RunningApi]]:
    """Factory: ``start_api(env: dict | None = None) -> base_url`` (a `RunningApi`).

    Each call gets its own data dir under ``tmp_path`` unless ``env`` sets SPECTRAL_DATA_DIR,
    and the suite's artifact store (``--artifact-store``) unless ``env`` names another.
    Servers are terminated at teardown; a failed test shows their logs.
    """
    started: list[RunningApi] = []

    def start(env: dict[str, str] | None = None) -> RunningApi:
        work_dir = tmp_path / f"api-{len(started)}"
        work_dir.mkdir()
        api = launch_api({**suite_store_env, **(env or {})}, work_dir)
        started.append(api)
        return api

    yield start
    for api in started:
        stop_api(api)
    if _failed(request):
        for api in started:
            sys.stdout.write(f"\n----- API log {api.log_path} -----\n{api.log_text()[-6000:]}\n")
