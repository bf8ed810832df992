"""The registry's tables (models, versions, aliases, alias moves) and the records it returns.

Rows live in the database; `Registry` (service/registry.py) is the only writer. Records are
plain frozen dataclasses, safe to hand to other threads and to the HTTP layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, UtcDateTime
from service.jobs.params import MAX_VERSION  # noqa: F401  (re-exported: the bound of its columns)


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class VersionRow(Base):
    __tablename__ = "model_versions"

    model_id: Mapped[str] = mapped_column(
        String(200), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    report_png_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model_id", "version"], ["model_versions.model_id", "model_versions.version"]
        ),
    )

    model_id: Mapped[str] = mapped_column(
        String(200), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class AliasEventRow(Base):
    """One move of an alias (created, moved, deleted), written in the transaction that moves it."""

    __tablename__ = "alias_events"
    __table_args__ = (Index("ix_alias_events_model_alias", "model_id", "alias", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(200), ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(100))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # "set" | "delete" | "promotion" | "rollback"
    reason: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)


@dataclass(frozen=True)
class VersionRecord:
    """One immutable model version, as stored."""

    model_id: str
    version: int
    sha256: str
    size_bytes: int
    created_at: datetime
    metadata: dict[str, Any]
    parent_version: int | None = None
    lineage: dict[str, Any] | None = None
    job_id: str | None = None
    report: dict[str, Any] | None = None
    report_png_sha256: str | None = None

    @property
    def compile_config(self) -> dict[str, Any] | None:
        """The ``model.compile`` kwargs saved in the artifact, recorded at upload.

        Versions stored before this was recorded got it from migration 0003, which read each
        stored artifact once.
        """
        config = self.metadata.get("compile_config")
        return dict(config) if config else None

    @classmethod
    def from_row(cls, row: VersionRow) -> VersionRecord:
        return cls(
            model_id=row.model_id,
            version=row.version,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            created_at=row.created_at,
            metadata=row.meta,
            parent_version=row.parent_version,
            lineage=row.lineage,
            job_id=row.job_id,
            report=row.report,
            report_png_sha256=row.report_png_sha256,
        )


@dataclass(frozen=True)
class ModelRecord:
    """A model with all its versions (oldest first) and aliases."""

    id: str
    created_at: datetime
    versions: list[VersionRecord] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)

    @property
    def latest_version(self) -> int | None:
        return self.versions[-1].version if self.versions else None


@dataclass(frozen=True)
class AliasEvent:
    """One recorded move of an alias, as stored."""

    model_id: str
    alias: str
    from_version: int | None
    to_version: int | None
    at: datetime
    job_id: str | None
    reason: str
    actor: str | None = None

    @classmethod
    def from_row(cls, row: AliasEventRow) -> AliasEvent:
        return cls(
            model_id=row.model_id,
            alias=row.alias,
            from_version=row.from_version,
            to_version=row.to_version,
            at=row.at,
            job_id=row.job_id,
            reason=row.reason,
            actor=row.actor,
        )
