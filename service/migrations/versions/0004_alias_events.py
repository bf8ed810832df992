"""Every move of an alias (set, delete, promotion, rollback), for its history and rollback.

Aliases that exist before this revision get no synthetic event: their history starts with
their next move, and a rollback before that answers that there is nothing to roll back to.

Revision ID: 0004_alias_events
Revises: 0003_version_compile_config
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_alias_events"
down_revision = "0003_version_compile_config"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "model_id",
            sa.String(200),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("alias", sa.String(100), nullable=False),
        sa.Column("from_version", sa.Integer, nullable=True),
        sa.Column("to_version", sa.Integer, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=True),
    )
    op.create_index("ix_alias_events_model_alias", "alias_events", ["model_id", "alias", "id"])


def downgrade() -> None:
    op.drop_index("ix_alias_events_model_alias", table_name="alias_events")
    op.drop_table("alias_events")
