"""Registry tables: models, model_versions, aliases.

Revision ID: 0001_registry
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_registry"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column(
            "model_id",
            sa.String(200),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, index=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("parent_version", sa.Integer, nullable=True),
        sa.Column("lineage", sa.JSON, nullable=True),
        sa.Column("job_id", sa.String(64), nullable=True, unique=True),
        sa.Column("report", sa.JSON, nullable=True),
        sa.Column("report_png_sha256", sa.String(64), nullable=True),
    )
    op.create_table(
        "aliases",
        sa.Column(
            "model_id",
            sa.String(200),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("alias", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id", "version"], ["model_versions.model_id", "model_versions.version"]
        ),
    )


def downgrade() -> None:
    op.drop_table("aliases")
    op.drop_table("model_versions")
    op.drop_table("models")
