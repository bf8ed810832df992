"""Pruning jobs: submit (``POST /prune``), follow (``GET /jobs/{id}``), list and cancel."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Depends, Header, Query, Request, Response

from service import jobs
from service.deps import RegistryDep, SettingsDep, require_read, require_write
from worker.celery_app import enqueue_job

router = APIRouter(tags=["jobs"])


def _celery(request: Request) -> Celery:
    """The app's Celery client (made by the app factory; it only sends messages)."""
    celery: Celery = request.app.state.celery
    return celery


CeleryDep = Annotated[Celery, Depends(_celery)]


@router.post(
    "/prune",
    status_code=202,
    response_model=jobs.JobAccepted,
    dependencies=[Depends(require_write)],
)
def submit_prune_job(
    body: jobs.PruneRequest,
    registry: RegistryDep,
    settings: SettingsDep,
    celery: CeleryDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> jobs.JobAccepted:
    new = jobs.submit_job(
        registry,
        body,
        settings=settings,
        enqueue=lambda job_id, queue: enqueue_job(celery, job_id, queue),
        idempotency_key=idempotency_key,
    )
    response.headers["Location"] = f"/jobs/{new.job.id}"
    return jobs.JobAccepted(job_id=new.job.id, status=new.job.status)


@router.get("/jobs", response_model=jobs.JobsPublic, dependencies=[Depends(require_read)])
def list_jobs(
    registry: RegistryDep,
    model_id: str | None = None,
    status: jobs.JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> jobs.JobsPublic:
    with registry.database.session() as session:
        return jobs.list_jobs(session, model_id=model_id, status=status, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=jobs.JobPublic, dependencies=[Depends(require_read)])
def read_job(job_id: str, registry: RegistryDep) -> jobs.JobPublic:
    with registry.database.session() as session:
        return jobs.get_job(session, job_id)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=jobs.JobPublic,
    dependencies=[Depends(require_write)],
)
def cancel_job(job_id: str, registry: RegistryDep) -> jobs.JobPublic:
    with registry.database.session() as session:
        return jobs.request_cancel(session, job_id)
