"""Registry against SQLite and PostgreSQL: versions, aliases (compare-and-set, history,
rollback, promotion), lineage, idempotency, migrations."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from sqlalchemy import func, inspect, select, text

from service.artifacts import ArtifactStore
from service.db import Database, alembic_config, upgrade_database
from service.errors import (
    AliasConflict,
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
from service.versions import AliasEvent, AliasEventRow, AliasRow, ModelRow, VersionRow
from tests.support.s3 import overwrite_blob
from tests.support.uploads import lambda_model_bytes

# Runs a second time in CI with the artifacts in S3 (scripts/test).
pytestmark = pytest.mark.artifact_store


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
        session.query(AliasEventRow).delete()
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


def test_serving_limits_are_kept_and_inherited_by_pruned_versions(
    registry: Registry, model_bytes: bytes
) -> None:
    limits = {"max_batch_size": 4, "max_delay_ms": 0.5}
    assert (
        registry.create_model("digits", model_bytes, serving=limits).metadata["serving"] == limits
    )
    # A job's version (made from a parent) keeps the parent's limits; an upload does not.
    pruned = registry.add_version("digits", model_bytes, parent_version=1, job_id="job-s")
    assert pruned.metadata["serving"] == limits
    assert "serving" not in registry.add_version("digits", model_bytes).metadata
    own = registry.add_version("digits", model_bytes, parent_version=1, serving={"max_delay_ms": 0})
    assert own.metadata["serving"] == {"max_delay_ms": 0}


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
    assert list(registry.store.shas()) == []


def test_corrupted_artifact_is_not_loaded(
    registry: Registry, model_bytes: bytes, digits_data: tuple[np.ndarray, np.ndarray]
) -> None:
    record = registry.create_model("digits", model_bytes)
    model = registry.load_keras_model(record)
    x = digits_data[0][:4]
    assert model.predict_on_batch(x).shape == (4, 10)
    data = bytearray(registry.read_artifact(record))
    data[len(data) // 2] ^= 0xFF
    overwrite_blob(registry.store, record.sha256, bytes(data))
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


# -- alias moves: compare-and-set, history, rollback, promotion ----------------------------------


def _moves(registry: Registry, alias: str = "production") -> list[tuple[object, ...]]:
    """The alias's history, oldest first, as (from, to, reason, job_id)."""
    events = registry.alias_history("digits", alias, limit=1000)
    return [(e.from_version, e.to_version, e.reason, e.job_id) for e in reversed(events)]


@pytest.fixture
def uninspected(registry: Registry) -> Registry:
    """The same registry, storing uploads without checking them in the sandbox.

    Alias moves never look at an artifact, and each sandboxed load costs seconds; uploads
    themselves are tested above.
    """
    return Registry(registry.database, registry.store, inspect=lambda _data: {})


@pytest.fixture
def three_versions(uninspected: Registry, model_bytes: bytes) -> Registry:
    uninspected.create_model("digits", model_bytes)
    uninspected.add_version("digits", model_bytes)
    uninspected.add_version("digits", model_bytes)
    return uninspected


def test_compare_and_set_alias(three_versions: Registry) -> None:
    registry = three_versions
    # The alias does not exist: any expected version is a conflict, and says so.
    with pytest.raises(AliasConflict) as missing:
        registry.set_alias("digits", "production", 1, if_version=1)
    assert missing.value.details == {"current_version": None}
    assert registry.alias_version("digits", "production") is None
    registry.set_alias("digits", "production", 1)
    registry.set_alias("digits", "production", 2, if_version=1)
    with pytest.raises(AliasConflict) as stale:
        registry.set_alias("digits", "production", 3, if_version=1)
    assert stale.value.details == {"current_version": 2}
    assert stale.value.status_code == 409 and stale.value.code == "alias_conflict"
    assert "version 2" in stale.value.message and "version 1" in stale.value.message
    assert registry.alias_version("digits", "production") == 2
    # A conflict checks the version before anything else would fail on it.
    with pytest.raises(VersionNotFound):
        registry.set_alias("digits", "production", 9, if_version=2)
    assert _moves(registry) == [(None, 1, "set", None), (1, 2, "set", None)]


def test_alias_history_records_every_move_newest_first(three_versions: Registry) -> None:
    registry = three_versions
    assert registry.alias_history("digits", "production") == []
    with pytest.raises(ModelNotFound):
        registry.alias_history("nope", "production")
    registry.set_alias("digits", "production", 1)
    registry.set_alias("digits", "production", 3)
    registry.set_alias("digits", "staging", 2)
    registry.delete_alias("digits", "production")
    registry.set_alias("digits", "production", 2)
    events = registry.alias_history("digits", "production")
    assert [(e.from_version, e.to_version, e.reason) for e in events] == [
        (None, 2, "set"),
        (3, None, "delete"),
        (1, 3, "set"),
        (None, 1, "set"),
    ]
    assert all(isinstance(e, AliasEvent) and e.at.tzinfo is not None for e in events)
    assert [e.at for e in events] == sorted((e.at for e in events), reverse=True)
    page = registry.alias_history("digits", "production", limit=2, offset=1)
    assert [(e.from_version, e.to_version) for e in page] == [(3, None), (1, 3)]
    assert _moves(registry, "staging") == [(None, 2, "set", None)]
    # A failed move records nothing.
    with pytest.raises(AliasNotFound):
        registry.delete_alias("digits", "canary")
    assert registry.alias_history("digits", "canary") == []


def test_rollback_moves_back_and_is_recorded(three_versions: Registry) -> None:
    registry = three_versions
    with pytest.raises(AliasConflict, match="no recorded move"):
        registry.rollback_alias("digits", "production")
    registry.set_alias("digits", "production", 1)
    with pytest.raises(AliasConflict, match="created by its last move") as created:
        registry.rollback_alias("digits", "production")
    assert created.value.details == {"current_version": 1}
    registry.set_alias("digits", "production", 3)
    # Setting the version it already has is recorded, but it is no move to roll back.
    registry.set_alias("digits", "production", 3)
    assert registry.rollback_alias("digits", "production").to_version == 1
    assert registry.alias_version("digits", "production") == 1
    # The rollback is the latest move: rolling back again undoes it.
    with pytest.raises(AliasConflict) as stale:
        registry.rollback_alias("digits", "production", if_version=3)
    assert stale.value.details == {"current_version": 1}
    assert registry.rollback_alias("digits", "production", if_version=1).to_version == 3
    assert _moves(registry)[-2:] == [(3, 1, "rollback", None), (1, 3, "rollback", None)]
    # After a delete, a rollback restores the deleted alias.
    registry.delete_alias("digits", "production")
    assert registry.rollback_alias("digits", "production").to_version == 3
    assert registry.alias_version("digits", "production") == 3
    with pytest.raises(ModelNotFound):
        registry.rollback_alias("nope", "production")


def _race(count: int, work: Callable[[int], object]) -> tuple[list[object], list[BaseException]]:
    """Runs ``work(i)`` in ``count`` threads released at once; returns results and errors."""
    barrier = threading.Barrier(count)
    results: list[object] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results.append(work(i))
        except BaseException as exc:  # collected and asserted by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_concurrent_compare_and_set_moves_exactly_one_wins(three_versions: Registry) -> None:
    registry = three_versions
    registry.set_alias("digits", "production", 1)
    targets = [2, 3] * 4
    won, lost = _race(
        len(targets),
        lambda i: registry.set_alias("digits", "production", targets[i], if_version=1),
    )
    assert len(won) == 1, lost
    assert len(lost) == len(targets) - 1
    winner = won[0]
    assert isinstance(winner, AliasEvent)
    assert all(isinstance(e, AliasConflict) for e in lost), lost
    assert {e.details["current_version"] for e in lost} == {winner.to_version}  # type: ignore[union-attr,index]
    assert registry.alias_version("digits", "production") == winner.to_version
    assert _moves(registry) == [(None, 1, "set", None), (1, winner.to_version, "set", None)]


def test_concurrent_unconditional_moves_record_an_unbroken_chain(
    three_versions: Registry,
) -> None:
    registry = three_versions
    registry.set_alias("digits", "production", 1)
    targets = [2, 3, 1, 2, 3, 1]
    done, errors = _race(
        len(targets), lambda i: registry.set_alias("digits", "production", targets[i])
    )
    assert errors == [] and len(done) == len(targets)
    moves = _moves(registry)
    # Each move starts where the one before it left the alias: none saw a stale version.
    assert all(prev[1] == nxt[0] for prev, nxt in zip(moves, moves[1:], strict=False))
    assert moves[-1][1] == registry.alias_version("digits", "production")


def test_concurrent_rollbacks_exactly_one_wins(three_versions: Registry) -> None:
    registry = three_versions
    registry.set_alias("digits", "production", 1)
    registry.set_alias("digits", "production", 2)
    # Each pipeline rolls back the version it saw go bad: one of them does it, once. (Without
    # if_version a rollback that runs after another one undoes it, by design.)
    won, lost = _race(4, lambda _: registry.rollback_alias("digits", "production", if_version=2))
    assert len(won) == 1 and all(isinstance(e, AliasConflict) for e in lost), lost
    assert registry.alias_version("digits", "production") == 1
    assert _moves(registry)[-1] == (2, 1, "rollback", None)
    assert len(_moves(registry)) == 3


def test_promotion_moves_the_alias_with_the_version_once(
    uninspected: Registry, model_bytes: bytes
) -> None:
    registry = uninspected
    registry.create_model("digits", model_bytes)
    registry.set_alias("digits", "production", 1)
    made = registry.add_version(
        "digits", model_bytes, parent_version=1, job_id="job-p", promote_alias="production"
    )
    assert registry.alias_version("digits", "production") == made.version == 2
    # A promotion creates an alias that does not exist yet, too.
    registry.add_version("digits", model_bytes, job_id="job-q", promote_alias="canary")
    assert registry.alias_version("digits", "canary") == 3
    # A retried job gets its version back and does not move the alias again.
    registry.set_alias("digits", "production", 1)
    again = registry.add_version("digits", model_bytes, job_id="job-p", promote_alias="production")
    assert again == made
    assert registry.alias_version("digits", "production") == 1
    assert _moves(registry) == [
        (None, 1, "set", None),
        (1, 2, "promotion", "job-p"),
        (2, 1, "set", None),
    ]
    assert registry.rollback_alias("digits", "production").to_version == 2


def test_migration_0004_downgrades_and_upgrades(tmp_path: Path, model_bytes: bytes) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings)
    registry = Registry(Database(settings), ArtifactStore(settings.artifact_root), lambda _: {})
    registry.create_model("digits", model_bytes)
    registry.set_alias("digits", "production", 1)
    with registry.database.engine.begin() as conn:
        config = alembic_config(settings.resolved_database_url)
        config.attributes["connection"] = conn
        command.downgrade(config, "0003_version_compile_config")
    with registry.database.session() as session:
        assert session.execute(text("SELECT count(*) FROM aliases")).scalar() == 1
        tables = inspect(session.connection()).get_table_names()
        assert "alias_events" not in tables
    upgrade_database(settings)
    # Aliases from before 0004 have no recorded moves: history starts empty.
    assert registry.alias_history("digits", "production") == []
    registry.database.dispose()
