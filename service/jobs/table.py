"""The `jobs` table: one row per pruning job, the record of its state (see `state`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from service.db import Base, UtcDateTime
from service.errors import JobNotFound

TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(32))
    # `PruneParams.recorded()`: what the method uses, as the new version's lineage records it.
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    queue: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    step: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    result_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


def get_job(session: Session, job_id: str) -> Job:
    """The job's row.

    Raises:
        JobNotFound: no job has this id.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"No job with id {job_id!r}")
    return job


def list_jobs(
    session: Session,
    *,
    model_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Job]:
    """Jobs, newest first, optionally of one model and in one status."""
    query = select(Job)
    if model_id is not None:
        query = query.where(Job.model_id == model_id)
    if status is not None:
        query = query.where(Job.status == status)
    return list(
        session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    )
