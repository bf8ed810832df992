"""Pruning jobs: the request schema, the `jobs` table and the job state machine.

The database is the record of a job's state; the broker only carries "run job <id>" messages.
Every transition is one conditional UPDATE, so a duplicate or late message can never run a job
twice or resurrect a finished one:

    queued --claim--> running --> succeeded | failed | cancelled
    queued --cancel--> cancelled
    running (heartbeat older than the lease) --recover--> queued (or failed past max attempts)

Nothing here imports TensorFlow or Keras: the worker's parent process imports this module
before it forks its children.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    Update,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from service.datasets import as_utc, get_dataset
from service.db import Base
from service.errors import SpectralError
from service.settings import Settings

if TYPE_CHECKING:
    from service.registry import Registry

logger = logging.getLogger(__name__)

Method = Literal["percentile", "metric", "pretrain"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
# Keys of `model.compile` a client may set; anything else would be an arbitrary kwarg.
COMPILE_KEYS = frozenset({"optimizer", "loss", "metrics", "loss_weights", "weighted_metrics"})


class JobNotFound(SpectralError):
    status_code = 404
    code = "job_not_found"


class IdempotencyConflict(SpectralError):
    status_code = 409
    code = "idempotency_conflict"


class JobFinished(SpectralError):
    status_code = 409
    code = "job_finished"


class CompileConfigMissing(SpectralError):
    status_code = 422
    code = "compile_config_missing"


class BrokerUnavailable(SpectralError):
    status_code = 503
    code = "broker_unavailable"


class JobCancelled(Exception):
    """Raised inside a running job when a client asked to cancel it."""


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _update() -> Update:
    # Conditional UPDATEs decide transitions in the database; the session's copies are
    # refreshed where needed instead of being evaluated in Python.
    return update(Job).execution_options(synchronize_session=False)


class PruneRequest(BaseModel):
    """Body of ``POST /prune``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str = Field(min_length=1, description="Model to prune.")
    version: int | None = Field(default=None, ge=1, description="Version; default the latest.")
    alias: str | None = Field(default=None, description="Alias to resolve instead of a version.")
    method: Method = Field(default="percentile", description="percentile | metric | pretrain.")
    percentile: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Remove nodes whose |eigenvalue| is below this percentile. Required for "
        "method=percentile; for pretrain, omit it to search by metric.",
    )
    compare_metric: str = Field(default="accuracy", description="Metric the search keeps.")
    higher_is_better: bool | None = Field(
        default=None,
        description="Direction of compare_metric; default inferred from its name (loss, "
        "errors, crossentropies, false positives/negatives are lower-is-better).",
    )
    max_delta_percent: float = Field(
        default=10.0, ge=0, le=100, description="Allowed relative metric loss, in percent."
    )
    percentile_step: float = Field(
        default=5.0, gt=0, le=100, description="Step of the metric-based search."
    )
    epochs: int = Field(default=5, ge=1, le=10_000, description="Eigenvalue pretraining epochs.")
    fine_tune_epochs: int | None = Field(
        default=None, ge=1, le=10_000, description="Fine-tune epochs; default `epochs`."
    )
    eigenvalues_only: bool = Field(
        default=False,
        description="pretrain: train only the eigenvalues in phase 1 (biases and non-Spectral "
        "layers frozen too); default freezes only the Spectral bases.",
    )
    batch_size: int = Field(default=32, ge=1, le=65_536, description="Batch size.")
    scope: Literal["global", "layer"] | None = Field(
        default=None,
        description='Percentile scope: one cutoff over all layers ("global") or one per layer '
        '("layer"). Default: "layer" for pretrain, "global" otherwise.',
    )
    min_units: int = Field(default=1, ge=1, description="Fewest nodes a layer keeps.")
    dataset_id: str | None = Field(
        default=None,
        description="Dataset from POST /datasets: required for metric and pretrain; for "
        "percentile it adds the metric before/after.",
    )
    compile: dict[str, Any] | None = Field(
        default=None,
        description="model.compile keyword arguments; default the artifact's own compile config.",
    )

    @model_validator(mode="after")
    def _check_combination(self) -> PruneRequest:
        if self.version is not None and self.alias is not None:
            raise ValueError("give either version or alias, not both")
        if self.method == "percentile" and self.percentile is None:
            raise ValueError("method=percentile needs a percentile between 0 and 100")
        if self.method in ("metric", "pretrain") and self.dataset_id is None:
            raise ValueError(f"method={self.method} needs a dataset_id (upload via POST /datasets)")
        if self.scope is None:
            self.scope = "layer" if self.method == "pretrain" else "global"
        if self.compile is not None:
            unknown = sorted(set(self.compile) - COMPILE_KEYS)
            if unknown:
                raise ValueError(
                    f"compile accepts only {sorted(COMPILE_KEYS)}. Received keys: {unknown}"
                )
        return self

    def params(self) -> dict[str, Any]:
        """The parameters this method uses, as recorded in the job and the new version's lineage."""
        unused = {"model_id", "version", "alias"}
        searches = self.method == "metric" or self.percentile is None
        if not searches:
            unused |= {"max_delta_percent", "percentile_step"}
        if self.method != "pretrain":
            unused |= {"epochs", "fine_tune_epochs", "eigenvalues_only"}
        if self.dataset_id is None:
            unused |= {"compare_metric", "higher_is_better"}
        return self.model_dump(exclude=unused, exclude_none=True)

    def fingerprint(self) -> str:
        """Stable hash of the request, to tell a retried request from a different one."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(32))
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobResult(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    version: int


class JobPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    status: JobStatus
    model_id: str
    version: int
    method: Method
    params: dict[str, Any]
    dataset_id: str | None
    queue: str
    progress: float
    step: str
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: JobResult | None
    report: dict[str, Any] | None
    error: str | None

    @classmethod
    def from_row(cls, job: Job) -> JobPublic:
        result = None
        if job.result_version is not None:
            result = JobResult(model_id=job.model_id, version=job.result_version)
        return cls(
            id=job.id,
            status=job.status,  # type: ignore[arg-type]
            model_id=job.model_id,
            version=job.version,
            method=job.method,  # type: ignore[arg-type]
            params=job.params,
            dataset_id=job.dataset_id,
            queue=job.queue,
            progress=job.progress,
            step=job.step,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            created_at=_aware(job.created_at) or _now(),
            started_at=_aware(job.started_at),
            finished_at=_aware(job.finished_at),
            result=result,
            report=job.report,
            error=job.error,
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus


def queue_for(method: str, settings: Settings) -> str:
    """The Celery queue a job of this method goes to (``settings.queue_routes``)."""
    return settings.queue_routes.get(method, settings.default_queue)


@dataclass(frozen=True)
class NewJob:
    """What `create_job` decided: the job and whether it was created by this call."""

    job: JobPublic
    created: bool


def create_job(
    session: Session,
    request: PruneRequest,
    *,
    version: int,
    settings: Settings,
    idempotency_key: str | None = None,
) -> NewJob:
    """Record a queued job for an already resolved model version.

    With an ``idempotency_key`` seen before, returns that job when the request is the same, and
    raises `IdempotencyConflict` when it differs.
    """
    fingerprint = request.fingerprint()
    if idempotency_key is not None:
        replay = _job_for_key(session, idempotency_key, fingerprint)
        if replay is not None:
            return replay
    job = Job(
        id=uuid.uuid4().hex,
        model_id=request.model_id,
        version=version,
        method=request.method,
        params=request.params(),
        dataset_id=request.dataset_id,
        queue=queue_for(request.method, settings),
        status="queued",
        progress=0.0,
        step="queued",
        attempts=0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        created_at=_now(),
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        # A concurrent request with the same key inserted first: answer with its job.
        replay = _job_for_key(session, idempotency_key, fingerprint) if idempotency_key else None
        if replay is None:
            raise
        return replay
    return NewJob(JobPublic.from_row(job), created=True)


def _job_for_key(session: Session, idempotency_key: str, fingerprint: str) -> NewJob | None:
    """The job already created under ``idempotency_key``, or None.

    Raises:
        IdempotencyConflict: The key was used with a different request body.
    """
    existing = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
    if existing is None:
        return None
    if existing.request_hash != fingerprint:
        raise IdempotencyConflict(
            f"Idempotency-Key {idempotency_key!r} was already used with a different request body"
        )
    return NewJob(JobPublic.from_row(existing), created=False)


def artifact_compile_config(data: bytes) -> dict[str, Any] | None:
    """The ``model.compile`` kwargs saved in a ``.keras`` artifact, or None when uncompiled."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError):
        return None
    compile_config = config.get("compile_config")
    if not compile_config or not compile_config.get("loss"):
        return None
    return {key: compile_config[key] for key in COMPILE_KEYS if key in compile_config}


Enqueue = Callable[[str, str], None]
"""Sends the message for ``(job_id, queue)``."""


def submit_job(
    registry: Registry,
    request: PruneRequest,
    *,
    settings: Settings,
    enqueue: Enqueue,
    idempotency_key: str | None = None,
) -> NewJob:
    """Validate a prune request against the registry, record the job and send its message.

    Raises:
        ModelNotFound, VersionNotFound, AliasNotFound, DatasetNotFound: unknown references.
        CompileConfigMissing: a dataset must be evaluated but nothing says how to compile.
        IdempotencyConflict: the key was used with another body.
        BrokerUnavailable: the message could not be sent (the job is then failed).
    """
    record = registry.resolve(request.model_id, request.version, request.alias)
    with registry.database.session() as session:
        if request.dataset_id is not None:
            get_dataset(session, request.dataset_id)
    if request.dataset_id is not None and request.compile is None:
        if artifact_compile_config(registry.read_artifact(record)) is None:
            raise CompileConfigMissing(
                f"Model {record.model_id!r} version {record.version} was saved without a compile "
                "config, so the dataset cannot be evaluated: pass `compile`, e.g. "
                '{"optimizer": "adam", "loss": "sparse_categorical_crossentropy", '
                '"metrics": ["accuracy"]}'
            )
    with registry.database.session() as session:
        new = create_job(
            session,
            request,
            version=record.version,
            settings=settings,
            idempotency_key=idempotency_key,
        )
    if new.created:
        try:
            enqueue(new.job.id, new.job.queue)
        except Exception as exc:
            logger.exception("could not send job %s to the broker", new.job.id)
            with registry.database.session() as session:
                mark_failed(session, new.job.id, f"Broker unavailable: {exc}")
            raise BrokerUnavailable(f"The job broker is unavailable: {exc}") from exc
    return new


def get_job(session: Session, job_id: str) -> JobPublic:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"No job with id {job_id!r}")
    return JobPublic.from_row(job)


def list_jobs(
    session: Session,
    *,
    model_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> JobsPublic:
    query = select(Job)
    if model_id is not None:
        query = query.where(Job.model_id == model_id)
    if status is not None:
        query = query.where(Job.status == status)
    rows = session.scalars(
        query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    ).all()
    return JobsPublic(data=[JobPublic.from_row(job) for job in rows], count=len(rows))


def request_cancel(session: Session, job_id: str) -> JobPublic:
    """Cancel a queued job at once; ask a running one to stop at its next step."""
    now = _now()
    session.execute(
        _update()
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now, step="cancelled")
    )
    session.execute(
        _update().where(Job.id == job_id, Job.status == "running").values(cancel_requested=True)
    )
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"No job with id {job_id!r}")
    session.refresh(job)
    if job.status in ("succeeded", "failed"):
        raise JobFinished(f"Job {job_id} already {job.status}; it cannot be cancelled")
    return JobPublic.from_row(job)


# --- transitions used by the worker -------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A job a worker may run now."""

    job_id: str
    model_id: str
    version: int
    method: str
    params: dict[str, Any]
    dataset_id: str | None
    attempt: int


def claim_job(session: Session, job_id: str, *, max_attempts: int) -> Claim | None:
    """Move a queued job to running and count the attempt; None when it must not run.

    A job past ``max_attempts`` is failed here instead of started again.
    """
    now = _now()
    claimed = session.execute(
        _update()
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
        .values(
            status="running",
            attempts=Job.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            step="starting",
        )
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        job = session.get(Job, job_id)
        logger.info("job %s not claimed (status %s)", job_id, job.status if job else "missing")
        return None
    job = session.get(Job, job_id)
    assert job is not None
    session.refresh(job)
    if job.attempts > max_attempts:
        _finish(
            session,
            job_id,
            "failed",
            error=f"Gave up after {max_attempts} attempts; the worker running it was lost",
        )
        return None
    return Claim(
        job_id=job.id,
        model_id=job.model_id,
        version=job.version,
        method=job.method,
        params=dict(job.params),
        dataset_id=job.dataset_id,
        attempt=job.attempts,
    )


def record_progress(session: Session, job_id: str, fraction: float, step: str) -> bool:
    """Store progress and a heartbeat; return whether a client asked to cancel the job."""
    session.execute(
        _update()
        .where(Job.id == job_id, Job.status == "running")
        .values(progress=max(0.0, min(1.0, fraction)), step=step[:500], heartbeat_at=_now())
    )
    return is_cancel_requested(session, job_id)


def is_cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def heartbeat(session: Session, job_id: str) -> None:
    session.execute(
        _update().where(Job.id == job_id, Job.status == "running").values(heartbeat_at=_now())
    )


def _finish(session: Session, job_id: str, status: str, **values: Any) -> bool:
    result = session.execute(
        _update()
        .where(Job.id == job_id, Job.status.in_(("queued", "running")))
        .values(status=status, finished_at=_now(), step=status, **values)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def mark_succeeded(
    session: Session, job_id: str, *, result_version: int, report: dict[str, Any]
) -> bool:
    return _finish(
        session, job_id, "succeeded", progress=1.0, result_version=result_version, report=report
    )


def mark_failed(session: Session, job_id: str, error: str) -> bool:
    return _finish(session, job_id, "failed", error=error[:4000])


def mark_cancelled(session: Session, job_id: str) -> bool:
    return _finish(session, job_id, "cancelled", error="cancelled on request")


def recover_jobs(
    session: Session,
    *,
    lease_s: float,
    max_attempts: int,
    queues: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Find jobs whose worker died: re-queue them, or fail them past ``max_attempts``.

    Returns ``(requeued_ids, failed_ids)``; the caller sends a message for each re-queued job.
    """
    stale_before = _now() - timedelta(seconds=lease_s)
    query = select(Job).where(Job.status == "running", Job.heartbeat_at < stale_before)
    if queues is not None:
        query = query.where(Job.queue.in_(list(queues)))
    requeued: list[str] = []
    failed: list[str] = []
    for job in session.scalars(query).all():
        stale = (Job.id == job.id, Job.status == "running", Job.heartbeat_at < stale_before)
        if job.cancel_requested:
            session.execute(
                _update()
                .where(*stale)
                .values(status="cancelled", finished_at=_now(), step="cancelled")
            )
            continue
        if job.attempts >= max_attempts:
            outcome = session.execute(
                _update()
                .where(*stale)
                .values(
                    status="failed",
                    finished_at=_now(),
                    step="failed",
                    error=f"The worker running attempt {job.attempts} was lost (no heartbeat "
                    f"for {lease_s:g} s) and the job reached {max_attempts} attempts",
                )
            )
            if outcome.rowcount == 1:  # type: ignore[attr-defined]
                failed.append(job.id)
        else:
            outcome = session.execute(
                _update()
                .where(*stale)
                .values(status="queued", step=f"re-queued after attempt {job.attempts} was lost")
            )
            if outcome.rowcount == 1:  # type: ignore[attr-defined]
                requeued.append(job.id)
    return requeued, failed


def queued_job_ids(session: Session, queues: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(job_id, queue)`` of every queued job, oldest first."""
    query = select(Job.id, Job.queue).where(Job.status == "queued")
    if queues is not None:
        query = query.where(Job.queue.in_(list(queues)))
    return [(row[0], row[1]) for row in session.execute(query.order_by(Job.created_at)).all()]
