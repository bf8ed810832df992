"""Pruning jobs and uploaded datasets.

Revision ID: 0002_jobs_datasets
Revises: 0001_registry
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_jobs_datasets"
down_revision = "0001_registry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("filename", sa.String(300), nullable=True),
        sa.Column("x_shape", sa.JSON, nullable=False),
        sa.Column("y_shape", sa.JSON, nullable=False),
        sa.Column("x_dtype", sa.String(32), nullable=False),
        sa.Column("y_dtype", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model_id", sa.String(200), nullable=False, index=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("dataset_id", sa.String(64), sa.ForeignKey("datasets.id"), nullable=True),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("step", sa.Text, nullable=False, server_default=""),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("idempotency_key", sa.String(200), nullable=True, unique=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("result_version", sa.Integer, nullable=True),
        sa.Column("report", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("datasets")
