"""Submitting a pruning job: check the request against the registry, record it, send it.

`submit_job` is what ``POST /prune`` calls. It takes an ``enqueue`` callable, so this module
knows nothing of Celery: the API passes its broker's sender, tests pass a list's append.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.datasets import get_dataset
from service.db import utcnow
from service.errors import BrokerUnavailable, IdempotencyConflict, InvalidInput
from service.jobs.params import PromoteSpec, PruneRequest
from service.jobs.state import mark_failed
from service.jobs.table import Job
from service.registry import Registry, check_slug
from service.settings import Settings

logger = logging.getLogger(__name__)

Enqueue = Callable[[str, str], None]
"""Sends the message for ``(job_id, queue)``."""


@dataclass(frozen=True)
class NewJob:
    """What `create_job` decided: the job and whether it was created by this call."""

    job: Job
    created: bool


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
        InvalidInput: ``promote`` without a dataset, with a bad alias or an unknown metric.
        IdempotencyConflict: the key was used with another body.
        BrokerUnavailable: the message could not be sent (the job is then failed).

    A process that dies between recording the job and sending its message leaves the job
    queued without a message: the workers send it again (``settings.job_resend_queued_s``).
    """
    record = registry.resolve(request.model_id, request.version, request.alias)
    with registry.database.session() as session:
        for dataset_id in request.dataset_ids:
            get_dataset(session, dataset_id)
    what = f"Model {record.model_id!r} version {record.version}"
    compile_config = request.compile_for(record.compile_config, what)
    if request.promote is not None:
        check_promotion(request.promote, request.dataset_id, compile_config)
    with registry.database.session() as session:
        new = create_job(
            session,
            request,
            version=record.version,
            settings=settings,
            idempotency_key=idempotency_key,
        )
    if new.created and settings.test_crash_after_job_row:
        # TEST ONLY (the chaos tests): die as a crash would, the row committed, nothing sent.
        logger.critical("SPECTRAL_TEST_CRASH_AFTER_JOB_ROW: exiting after job %s", new.job.id)
        os._exit(70)
    if new.created:
        try:
            enqueue(new.job.id, new.job.queue)
        except Exception as exc:
            logger.exception("could not send job %s to the broker", new.job.id)
            with registry.database.session() as session:
                mark_failed(session, new.job.id, f"Broker unavailable: {exc}")
            raise BrokerUnavailable(f"The job broker is unavailable: {exc}") from exc
    return new


def check_promotion(
    promote: PromoteSpec, dataset_id: str | None, compile_config: dict[str, Any] | None
) -> None:
    """Checks a promotion gate before the job runs, so a typo fails the request, not the job.

    Raises:
        InvalidInput: no dataset to compare on, an alias that is not a slug, or a metric the
            compiled model does not report.
    """
    if dataset_id is None:
        raise InvalidInput(
            "promote needs dataset_id: the gate compares the metric before and after on it "
            "(upload via POST /datasets)"
        )
    check_slug(promote.alias, "promote.alias")
    reported = compiled_metric_names(compile_config)
    # Multi-output models prefix each metric with its output's name ("digits_accuracy").
    if promote.metric == "loss" or any(
        promote.metric == name or promote.metric.endswith(f"_{name}") for name in reported
    ):
        return
    raise InvalidInput(
        f"promote.metric must be one of the model's compiled metrics or 'loss'. Available: "
        f"{sorted({'loss', *reported})}. Received: {promote.metric!r}"
    )


def compiled_metric_names(compile_config: dict[str, Any] | None) -> set[str]:
    """The names of the metrics (and weighted metrics) a compile config asks for."""
    names: set[str] = set()

    def collect(value: Any) -> None:
        if isinstance(value, str):
            names.add(value)
        elif isinstance(value, list | tuple):
            for item in value:
                collect(item)
        elif isinstance(value, dict):
            if "class_name" in value:  # a serialized metric object
                config = value.get("config")
                name = config.get("name") if isinstance(config, dict) else None
                if isinstance(name, str):
                    names.add(name)
            else:  # per-output metrics
                for item in value.values():
                    collect(item)

    for key in ("metrics", "weighted_metrics"):
        collect((compile_config or {}).get(key))
    return names


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
        params=request.params().recorded(),
        dataset_id=request.dataset_id,
        queue=settings.queue_for(request.method),
        status="queued",
        progress=0.0,
        step="queued",
        attempts=0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        created_at=utcnow(),
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
    return NewJob(job, created=True)


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
    return NewJob(existing, created=False)
