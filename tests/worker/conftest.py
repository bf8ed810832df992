"""Fixtures for worker tests: a migrated registry database on SQLite or PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.db import Database, upgrade_database
from service.settings import Settings


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


@pytest.fixture(scope="session")
def digits_model(digits_model_path: Path) -> bytes:
    """The shared digits model (Spectral, Spectral, Dense; compiled) as .keras bytes."""
    return digits_model_path.read_bytes()
