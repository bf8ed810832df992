"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import MetricsDep, SettingsDep, require_metrics_read
from service.db import Database
from service.metrics import JobMetrics, mark_this_process_dead

logger = logging.getLogger(__name__)


@asynccontextmanager
async def _metrics_lifespan(app: FastAPI) -> AsyncIterator[None]:
    # uvicorn has no per-worker exit hook; each worker process runs its app's lifespan, so this
    # is where one API process of several tells prometheus-client it is gone.
    yield
    mark_this_process_dead()


router = APIRouter(tags=["ops"], lifespan=_metrics_lifespan)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Runs every readiness check on ``app.state.readiness_checks``; 503 if any fails."""
    results: dict[str, Any] = {}
    ready = True
    for name, check in request.app.state.readiness_checks:
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # a failing check must be reported, whatever it raised
            # The exception text can name hosts and credentials: it goes to the log only.
            logger.warning("readiness check %s failed: %s", name, exc)
            results[name] = f"failed ({type(exc).__name__})"
            ready = False
    body = {"status": "ready" if ready else "not_ready", "checks": results}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    dependencies=[Depends(require_metrics_read)],
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request, service_metrics: MetricsDep, settings: SettingsDep) -> Response:
    """Prometheus text format: the HTTP and predict counts of every API process, and the jobs
    in the database. On a server with protected reads, only the admin token."""
    database: Database = request.app.state.database
    jobs = JobMetrics(database, settings.all_queues)
    return Response(service_metrics.render(jobs), media_type=CONTENT_TYPE_LATEST)
