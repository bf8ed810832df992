"""Pruning jobs: submit (``POST /prune``), follow (``GET /jobs/{id}``), list and cancel.

``POST /prune`` reads on in `service.jobs.submission.submit_job` (record and send), then in the
worker: `worker.tasks.run_pruning_job` and `worker.runner.execute_job`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from sqlalchemy.orm import Session

from service.api.deps import (
    BrokerDep,
    ReaderDep,
    RegistryDep,
    SettingsDep,
    WriterDep,
    model_not_found,
    require_read,
    require_write,
    visible_job,
)
from service.api.params import LimitQuery, OffsetQuery
from service.api.schemas import JobAccepted, JobPublic, JobsPublic
from service.jobs import state, submission, table
from service.jobs.params import JobStatus, PruneRequest
from service.jobs.table import Job
from service.tokens import Principal

router = APIRouter(tags=["jobs"])


@router.post(
    "/prune", status_code=202, response_model=JobAccepted, dependencies=[Depends(require_write)]
)
def submit_prune_job(
    body: PruneRequest,
    registry: RegistryDep,
    settings: SettingsDep,
    broker: BrokerDep,
    response: Response,
    principal: WriterDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobAccepted:
    if not principal.sees(body.model_id):
        raise model_not_found(body.model_id)
    new = submission.submit_job(
        registry,
        body,
        settings=settings,
        enqueue=broker.enqueue,
        idempotency_key=idempotency_key,
    )
    response.headers["Location"] = f"/jobs/{new.job.id}"
    return JobAccepted(job_id=new.job.id, status=new.job.status)  # type: ignore[arg-type]


@router.get("/jobs", response_model=JobsPublic, dependencies=[Depends(require_read)])
def list_jobs(
    registry: RegistryDep,
    principal: ReaderDep,
    model_id: str | None = None,
    status: JobStatus | None = None,
    limit: LimitQuery = 100,
    offset: OffsetQuery = 0,
) -> JobsPublic:
    """Jobs newest first, of the models the caller's token may see."""
    if model_id is not None and not principal.sees(model_id):
        return JobsPublic(data=[], count=0)
    with registry.database.session() as session:
        if principal.token is None:
            rows = table.list_jobs(
                session, model_id=model_id, status=status, limit=limit, offset=offset
            )
        else:
            rows = _visible_jobs(session, principal, model_id, status, limit, offset)
    return JobsPublic(data=[JobPublic.from_row(job) for job in rows], count=len(rows))


_PAGE = 500


def _visible_jobs(
    session: Session,
    principal: Principal,
    model_id: str | None,
    status: JobStatus | None,
    limit: int,
    offset: int,
) -> list[Job]:
    # Model scopes are name patterns, so the filter runs here, page by page, over the same
    # newest-first order; offset and limit count visible jobs only.
    visible: list[Job] = []
    start = 0
    while len(visible) < offset + limit:
        page = table.list_jobs(session, model_id=model_id, status=status, limit=_PAGE, offset=start)
        visible.extend(job for job in page if principal.sees(job.model_id))
        if len(page) < _PAGE:
            break
        start += _PAGE
    return visible[offset : offset + limit]


@router.get("/jobs/{job_id}", response_model=JobPublic, dependencies=[Depends(require_read)])
def read_job(job_id: str, registry: RegistryDep, principal: ReaderDep) -> JobPublic:
    with registry.database.session() as session:
        return JobPublic.from_row(visible_job(session, principal, job_id))


@router.post(
    "/jobs/{job_id}/cancel", response_model=JobPublic, dependencies=[Depends(require_write)]
)
def cancel_job(job_id: str, registry: RegistryDep, principal: WriterDep) -> JobPublic:
    """A queued job never starts; a running one stops at its next step."""
    with registry.database.session() as session:
        visible_job(session, principal, job_id)
        return JobPublic.from_row(state.request_cancel(session, job_id))
