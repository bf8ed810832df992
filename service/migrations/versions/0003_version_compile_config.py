"""Record each version's compile configuration in its metadata.

New uploads record it when they are inspected; this backfills the versions stored before, by
reading each one's artifact once, so no job ever opens an artifact to find it.

Revision ID: 0003_version_compile_config
Revises: 0002_jobs_datasets
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

from service.artifacts import BlobStore, LocalStore
from service.errors import ArtifactCorrupted
from service.model_loading import compile_config_from_archive

revision = "0003_version_compile_config"
down_revision = "0002_jobs_datasets"
branch_labels = None
depends_on = None

_versions = sa.table(
    "model_versions",
    sa.column("model_id", sa.String),
    sa.column("version", sa.Integer),
    sa.column("sha256", sa.String),
    sa.column("metadata", sa.JSON),
)


def upgrade() -> None:
    store = _artifact_store()
    conn = op.get_bind()
    for model_id, version, sha256, metadata in conn.execute(sa.select(_versions)).all():
        if "compile_config" in metadata:
            continue
        try:
            config = compile_config_from_archive(store.read(sha256))
        except ArtifactCorrupted:  # a missing file: jobs on it fail when they load it anyway
            config = None
        conn.execute(
            _versions.update()
            .where(_versions.c.model_id == model_id, _versions.c.version == version)
            .values(metadata={**metadata, "compile_config": config})
        )


def _artifact_store() -> BlobStore:
    """The store `service.db.upgrade_database` passes (``artifact_store``, from
    ``store_for(settings, "artifacts")``), else the directory it passes (``artifact_root``)."""
    store = context.config.attributes.get("artifact_store")
    if store is not None:
        return store  # type: ignore[no-any-return]
    root = context.config.attributes.get("artifact_root")
    if root is None:
        raise RuntimeError("run migrations through service.db.upgrade_database (artifact store)")
    return LocalStore(Path(root))


def downgrade() -> None:
    conn = op.get_bind()
    for model_id, version, metadata in conn.execute(
        sa.select(_versions.c.model_id, _versions.c.version, _versions.c.metadata)
    ).all():
        if "compile_config" in metadata:
            kept = {key: value for key, value in metadata.items() if key != "compile_config"}
            conn.execute(
                _versions.update()
                .where(_versions.c.model_id == model_id, _versions.c.version == version)
                .values(metadata=kept)
            )
