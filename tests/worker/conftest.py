"""Fixtures for worker tests: a migrated registry database on SQLite or PostgreSQL."""

from __future__ import annotations

import tempfile
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


def build_digits_model(*, compiled: bool = True, epochs: int = 8) -> bytes:
    """A small Spectral network trained on sklearn's digits, as .keras bytes."""
    import keras
    from sklearn.datasets import load_digits

    from spectral import Spectral

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            Spectral(48, activation="relu", is_base_trainable=True),
            Spectral(32, activation="relu", is_base_trainable=True),
            Spectral(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    if not compiled:
        model = keras.Sequential(model.layers)
        model.build((None, 64))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits.keras"
        model.save(path)
        return path.read_bytes()


def digits_npz(*, n: int = 400, features: int = 64) -> bytes:
    """The first ``n`` digits as an .npz upload (``features`` != 64 gives a wrong shape)."""
    import io

    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x[:n, :features] / 16.0).astype("float32")
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y[:n].astype("int64"))
    return buffer.getvalue()


@pytest.fixture(scope="session")
def digits_model() -> bytes:
    return build_digits_model()
