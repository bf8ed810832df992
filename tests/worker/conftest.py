"""Fixtures for worker tests: a migrated registry database on SQLite or PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from service.db import Database, upgrade_database
from service.settings import Settings

POSTGRES_ADMIN_URL = "postgresql+psycopg://127.0.0.1:5432/test"


def _postgres_database() -> Iterator[str]:
    """A throw-away PostgreSQL database, so parallel test runs never share tables."""
    name = f"spectral_jobs_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        admin.dispose()
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not usable: {exc}")
    try:
        yield f"postgresql+psycopg://127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def job_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings with a migrated database (both backends the service supports)."""
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path)
        upgrade_database(settings)
        yield settings
        return
    for url in _postgres_database():
        settings = Settings(data_dir=tmp_path, database_url=url)
        upgrade_database(settings)
        yield settings


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path, job_lease_s=0.5, job_max_attempts=2)
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
