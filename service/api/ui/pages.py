"""The UI's read-only pages: models, one model's lineage, one version, jobs, and their data.

Each page calls the same domain functions as the JSON routes (`Registry`, `service.jobs.table`,
the app's `Predictor`) and renders the result; nothing here writes.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import PredictorDep, RegistryDep, SettingsDep, visible_job
from service.api.limits import load_json_limited
from service.api.schemas import JobPublic, VersionPublic
from service.api.ui import plots, views
from service.api.ui.access import check_read, count_prediction, ui_access
from service.api.ui.rendering import html_errors, render
from service.errors import SpectralError
from service.jobs import table
from service.jobs.params import JobStatus
from service.registry import Registry

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=html_errors())

JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)


def status_filter(value: str) -> JobStatus | None:
    return value if value in JOB_STATUSES else None  # type: ignore[return-value]


@router.get("")
def models_page(request: Request, registry: RegistryDep, q: str = "") -> Response:
    access = ui_access(request)
    check_read(access)
    needle = q.strip().lower()
    rows = []
    with registry.database.session() as session:
        for model in registry.list_models():
            if (needle and needle not in model.id) or not access.sees(model.id):
                continue
            latest = model.versions[-1] if model.versions else None
            last_jobs = table.list_jobs(session, model_id=model.id, limit=1)
            rows.append(
                {
                    "model": model,
                    "latest": latest,
                    "aliases": sorted(model.aliases.items()),
                    "last_job": last_jobs[0] if last_jobs else None,
                }
            )
    return render(request, "models.html", {"rows": rows, "q": q})


ALIAS_HISTORY_SHOWN = 5


def model_context(registry: Registry, model_id: str) -> dict[str, Any]:
    """What the model page shows: the lineage tree, the aliases as the page saw them (for the
    compare-and-set moves) and each alias's latest moves."""
    model = registry.get_model(model_id)
    return {
        "model": model,
        "tree": views.lineage_tree(model),
        "seen_aliases": json.dumps(model.aliases, sort_keys=True),
        "alias_history": {
            alias: registry.alias_history(model_id, alias, limit=ALIAS_HISTORY_SHOWN)
            for alias in sorted(model.aliases)
        },
    }


@router.get("/models/{model_id}")
def model_page(request: Request, model_id: str, registry: RegistryDep) -> Response:
    check_read(ui_access(request), model_id)
    return render(request, "model.html", model_context(registry, model_id))


def _try_it(
    request: Request, inputs: str | None, record: Any, predictor: Any, settings: Any
) -> tuple[str, Any, str | None]:
    """The try-it box: the inputs shown, the outputs (None before a try) and the error text."""
    if inputs is None:
        return views.example_inputs(record), None, None
    try:
        count_prediction(request, ui_access(request))
        parsed = load_json_limited(inputs, settings, "The inputs")
        return inputs, predictor.predict(record, parsed), None
    except SpectralError as exc:
        return inputs, None, exc.message


@router.get("/models/{model_id}/versions/{version}")
def version_page(
    request: Request,
    model_id: str,
    version: int,
    registry: RegistryDep,
    predictor: PredictorDep,
    settings: SettingsDep,
    inputs: Annotated[str | None, Query(max_length=100_000)] = None,
) -> Response:
    check_read(ui_access(request), model_id)
    record = registry.resolve(model_id, version)
    model = registry.get_model(model_id)
    badges = views.aliases_by_version(model)
    parent = None
    if record.parent_version is not None:
        parent_record = registry.resolve(model_id, record.parent_version)
        parent = views.summarize(parent_record, badges.get(parent_record.version, []))
    report = record.report or {}
    shown_inputs, outputs, predict_error = _try_it(request, inputs, record, predictor, settings)
    return render(
        request,
        "version.html",
        {
            "record": record,
            "public": VersionPublic.from_record(record),
            "summary": views.summarize(record, badges.get(record.version, [])),
            "parent": parent,
            "report": report,
            "has_eigen_plot": plots.has_plot(record, "eigenvalues"),
            "has_metric_plot": plots.has_plot(record, "metric"),
            "layers": views.eigenvalue_rows(report),
            "evaluations": views.evaluation_rows(report),
            "budget": views.budget_value(report),
            "inputs": shown_inputs,
            "outputs": None if outputs is None else json.dumps(outputs),
            "output_lines": views.output_summary(outputs),
            "predict_error": predict_error,
        },
    )


@router.get("/models/{model_id}/versions/{version}/plots/{kind}.png")
def plot_png(
    request: Request, model_id: str, version: int, kind: plots.PlotKind, registry: RegistryDep
) -> Response:
    check_read(ui_access(request), model_id)
    image = plots.report_png(registry.resolve(model_id, version), kind)
    return Response(
        image, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/models/{model_id}/versions/{version}/artifact")
def download_artifact(
    request: Request, model_id: str, version: int, registry: RegistryDep
) -> Response:
    """The artifact, for browsers whose session (not a bearer header) grants reads."""
    check_read(ui_access(request), model_id)
    record = registry.resolve(model_id, version)
    return Response(
        registry.read_artifact(record),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{model_id}-v{version}.keras"'},
    )


@router.get("/jobs")
def jobs_page(
    request: Request,
    registry: RegistryDep,
    model_id: str = "",
    status: str = "",
) -> Response:
    access = ui_access(request)
    check_read(access)
    with registry.database.session() as session:
        rows = [
            JobPublic.from_row(job)
            for job in table.list_jobs(
                session, model_id=model_id or None, status=status_filter(status), limit=200
            )
            if access.sees(job.model_id)
        ]
    return render(
        request,
        "jobs.html",
        {"jobs": rows, "model_id": model_id, "status": status, "statuses": JOB_STATUSES},
    )


@router.get("/jobs/progress")
def jobs_progress(
    request: Request,
    registry: RegistryDep,
    job_id: Annotated[list[str], Query(alias="id", max_length=200)],
) -> JSONResponse:
    """Status, progress, step and error of the listed jobs, for the pages' once-a-second poll."""
    access = ui_access(request)
    check_read(access)
    found = []
    with registry.database.session() as session:
        for one in job_id:
            try:
                job = JobPublic.from_row(visible_job(session, access.principal, one))
            except SpectralError:
                continue
            found.append(
                {
                    "id": job.id,
                    "status": job.status,
                    "progress": job.progress,
                    "step": job.step,
                    "error": job.error,
                    "result_version": job.result.version if job.result else None,
                }
            )
    return JSONResponse({"data": found})


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, registry: RegistryDep) -> Response:
    access = ui_access(request)
    check_read(access)
    with registry.database.session() as session:
        job = JobPublic.from_row(visible_job(session, access.principal, job_id))
    return render(request, "job.html", {"job": job})
