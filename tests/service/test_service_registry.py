"""Registry against SQLite and PostgreSQL: versions, aliases, lineage, idempotency, rollback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, text

from service.db import upgrade_database
from service.errors import (
    AliasNotFound,
    ArtifactCorrupted,
    ArtifactRejected,
    InvalidInput,
    ModelExists,
    ModelNotFound,
    ReportNotFound,
    VersionNotFound,
)
from service.model_loading import compile_config_from_archive
from service.registry import Registry
from service.settings import Settings
from service.versions import AliasRow, ModelRow, VersionRow
from tests.support.uploads import lambda_model_bytes


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    settings = Settings(data_dir=tmp_path, database_url=url)
    upgrade_database(settings)
    reg = Registry.from_settings(settings)
    _empty(reg)
    yield reg
    _empty(reg)
    reg.database.dispose()


def _empty(registry: Registry) -> None:
    # The PostgreSQL database is shared by the test session: each test starts from empty tables.
    with registry.database.session() as session:
        session.query(AliasRow).delete()
        session.query(VersionRow).delete()
        session.query(ModelRow).delete()


def _counts(registry: Registry) -> tuple[int, int]:
    with registry.database.session() as session:
        models = session.scalar(select(func.count()).select_from(ModelRow))
        versions = session.scalar(select(func.count()).select_from(VersionRow))
    return int(models or 0), int(versions or 0)


def test_versions_are_sequential_and_immutable(registry: Registry, model_bytes: bytes) -> None:
    first = registry.create_model("digits", model_bytes)
    second = registry.add_version("digits", model_bytes)
    assert (first.version, second.version) == (1, 2)
    assert first.sha256 == second.sha256
    model = registry.get_model("digits")
    assert [v.version for v in model.versions] == [1, 2]
    assert model.latest_version == 2
    assert registry.resolve("digits").version == 2
    assert registry.resolve("digits", 1) == first
    assert registry.read_artifact(first) == model_bytes
    assert [m.id for m in registry.list_models()] == ["digits"]
    with pytest.raises(ModelExists):
        registry.create_model("digits", model_bytes)
    assert _counts(registry) == (1, 2)


def test_aliases(registry: Registry, model_bytes: bytes) -> None:
    registry.create_model("digits", model_bytes)
    registry.add_version("digits", model_bytes)
    assert registry.resolve_serving("digits", "production").version == 2
    registry.set_alias("digits", "production", 1)
    assert registry.resolve("digits", alias="production").version == 1
    assert registry.resolve_serving("digits", "production").version == 1
    registry.set_alias("digits", "production", 2)
    assert registry.get_model("digits").aliases == {"production": 2}
    registry.delete_alias("digits", "production")
    with pytest.raises(AliasNotFound):
        registry.resolve("digits", alias="production")
    with pytest.raises(AliasNotFound):
        registry.delete_alias("digits", "production")
    with pytest.raises(VersionNotFound):
        registry.set_alias("digits", "production", 7)
    with pytest.raises(InvalidInput):
        registry.set_alias("digits", "Not A Slug", 1)


def test_unknown_model_and_version(registry: Registry, model_bytes: bytes) -> None:
    with pytest.raises(ModelNotFound):
        registry.resolve("nope")
    with pytest.raises(ModelNotFound):
        registry.resolve_serving("nope", "production")
    with pytest.raises(ModelNotFound):
        registry.add_version("nope", model_bytes)
    registry.create_model("digits", model_bytes)
    with pytest.raises(VersionNotFound):
        registry.resolve("digits", 3)
    with pytest.raises(VersionNotFound):
        registry.add_version("digits", model_bytes, parent_version=9)


def test_lineage_report_and_job_id_idempotency(registry: Registry, model_bytes: bytes) -> None:
    registry.create_model("digits", model_bytes)
    lineage = {"job_id": "job-1", "method": "percentile", "params": {"percentile": 50}}
    made = registry.add_version(
        "digits",
        model_bytes,
        parent_version=1,
        lineage=lineage,
        job_id="job-1",
        report={"accuracy_before": 0.9},
        report_png=b"\x89PNG fake image",
    )
    again = registry.add_version("digits", model_bytes, job_id="job-1")
    assert again == made
    assert (made.version, made.parent_version, made.lineage) == (2, 1, lineage)
    assert registry.read_report_png(made) == b"\x89PNG fake image"
    with pytest.raises(ReportNotFound):
        registry.read_report_png(registry.resolve("digits", 1))
    assert _counts(registry) == (1, 2)


def test_concurrent_adds_with_one_job_id_make_one_version(
    registry: Registry, model_bytes: bytes
) -> None:
    registry.create_model("digits", model_bytes)
    results: list[int] = []
    errors: list[BaseException] = []

    def add() -> None:
        try:
            results.append(registry.add_version("digits", model_bytes, job_id="job-x").version)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1
    assert _counts(registry) == (1, 2)


def test_concurrent_uploads_get_distinct_versions(registry: Registry, model_bytes: bytes) -> None:
    registry.create_model("digits", model_bytes)
    results: list[int] = []

    def add() -> None:
        results.append(registry.add_version("digits", model_bytes).version)

    threads = [threading.Thread(target=add) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [2, 3, 4]


def test_rejected_upload_leaves_nothing(
    registry: Registry, model_bytes: bytes, tmp_path: Path
) -> None:
    bad = [lambda_model_bytes(tmp_path), b"plain text", model_bytes[:1000]]
    for data in bad:
        with pytest.raises(ArtifactRejected):
            registry.create_model("bad", data)
    with pytest.raises(InvalidInput):
        registry.create_model("Bad Name!", model_bytes)
    assert _counts(registry) == (0, 0)
    assert registry.store.files() == []


def test_corrupted_artifact_is_not_loaded(
    registry: Registry, model_bytes: bytes, digits_data: tuple[np.ndarray, np.ndarray]
) -> None:
    record = registry.create_model("digits", model_bytes)
    model = registry.load_keras_model(record)
    x = digits_data[0][:4]
    assert model.predict_on_batch(x).shape == (4, 10)
    path = registry.artifact_path(record)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupted):
        registry.load_keras_model(record)


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings)
    upgrade_database(settings)
    assert Registry.from_settings(settings).list_models() == []


def test_migration_0003_backfills_compile_configs(tmp_path: Path, model_bytes: bytes) -> None:
    """Versions stored before compile configs were recorded get theirs from the artifact."""
    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings, revision="0002_jobs_datasets")
    registry = Registry.from_settings(settings)
    sha256, size = registry.store.put(model_bytes)
    with registry.database.session() as session:
        session.execute(
            text("INSERT INTO models (id, created_at) VALUES ('old', '2025-01-01 00:00:00');")
        )
        session.execute(
            text(
                "INSERT INTO model_versions (model_id, version, sha256, size_bytes, created_at, "
                "metadata) VALUES ('old', 1, :sha, :size, '2025-01-01 00:00:00', '{}')"
            ),
            {"sha": sha256, "size": size},
        )
    upgrade_database(settings)
    backfilled = registry.resolve("old", 1)
    assert backfilled.compile_config is not None
    assert backfilled.compile_config["loss"] == "sparse_categorical_crossentropy"
    assert backfilled.compile_config == compile_config_from_archive(model_bytes)
