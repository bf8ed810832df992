"""Pruning jobs: submit (``POST /prune``), follow (``GET /jobs/{id}``), list and cancel.

``POST /prune`` reads on in `service.jobs.submission.submit_job` (record and send), then in the
worker: `worker.tasks.run_pruning_job` and `worker.runner.execute_job`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response

from service.api.deps import BrokerDep, RegistryDep, SettingsDep, require_read, require_write
from service.api.schemas import JobAccepted, JobPublic, JobsPublic
from service.jobs import state, submission, table
from service.jobs.params import PruneRequest
from service.jobs.params import JobStatus

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
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobAccepted:
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
    model_id: str | None = None,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    # Bounded so the database is never handed an offset its integer type overflows on.
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> JobsPublic:
    with registry.database.session() as session:
        rows = table.list_jobs(
            session, model_id=model_id, status=status, limit=limit, offset=offset
        )
    return JobsPublic(data=[JobPublic.from_row(job) for job in rows], count=len(rows))


@router.get("/jobs/{job_id}", response_model=JobPublic, dependencies=[Depends(require_read)])
def read_job(job_id: str, registry: RegistryDep) -> JobPublic:
    with registry.database.session() as session:
        return JobPublic.from_row(table.get_job(session, job_id))


@router.post(
    "/jobs/{job_id}/cancel", response_model=JobPublic, dependencies=[Depends(require_write)]
)
def cancel_job(job_id: str, registry: RegistryDep) -> JobPublic:
    """A queued job never starts; a running one stops at its next step."""
    with registry.database.session() as session:
        return JobPublic.from_row(state.request_cancel(session, job_id))
