"""The UI's writes: log in and out, upload models, versions and datasets, submit and cancel
jobs, move aliases.

Each form posts here; the handler checks the browser may write (`access.check_write`), calls
the same domain function as the JSON route, and either redirects to the result or renders the
form again with the service's message next to the field it concerns.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from service import datasets
from service.api.deps import (
    BrokerDep,
    RegistryDep,
    SettingsDep,
    model_not_found,
    principal_for_token,
    visible_job,
)
from service.api.limits import MULTIPART_OVERHEAD, body_limit, read_model_upload, read_upload
from service.api.schemas import DatasetPublic
from service.api.ui import session as ui_session
from service.api.ui.access import (
    UiAccess,
    check_form_origin,
    check_read,
    check_same_site,
    check_write,
    ui_access,
)
from service.api.ui.pages import model_context
from service.api.ui.rendering import html_errors, render
from service.errors import (
    AliasConflict,
    AliasNotFound,
    CompileConfigMissing,
    DatasetNotFound,
    DatasetRejected,
    Forbidden,
    InvalidInput,
    ModelExists,
    ModelNotFound,
    SpectralError,
    VersionNotFound,
)
from service.jobs import state, submission
from service.jobs.params import PruneRequest
from service.registry import Registry
from service.tokens import TokenTable

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=html_errors())
model_uploads = APIRouter(
    prefix="/ui",
    include_in_schema=False,
    route_class=html_errors(body_limit("max_upload_bytes", overhead=MULTIPART_OVERHEAD)),
)
dataset_uploads = APIRouter(
    prefix="/ui",
    include_in_schema=False,
    route_class=html_errors(body_limit("max_dataset_bytes", overhead=MULTIPART_OVERHEAD)),
)

CsrfField = Annotated[str, Form(max_length=200)]
FormText = Annotated[str, Form(max_length=200)]
PRUNE_FIELDS = (
    "model_id",
    "version",
    "method",
    "percentile",
    "max_delta_percent",
    "dataset_id",
    "promote_alias",
    "promote_max_drop",
)
# Fields of the nested promotion gate, by their location in `PruneRequest`.
_PROMOTE_FIELDS = {"alias": "promote_alias", "max_drop_percent": "promote_max_drop"}


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- login ----------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str = "/ui") -> Response:
    return render(request, "login.html", {"next": _local(next), "errors": {}})


def _local(url: str) -> str:
    """``url`` if it is a path of this UI, else the UI's home (no open redirects)."""
    return url if url.startswith("/ui") and "//" not in url and "\\" not in url else "/ui"


@router.post("/login")
def login(
    request: Request,
    settings: SettingsDep,
    token: Annotated[str, Form(max_length=1000)],
    next: Annotated[str, Form()] = "/ui",
) -> Response:
    check_same_site(request)
    tokens: TokenTable = request.app.state.tokens
    key = ui_session.session_key(settings, tokens)
    principal = principal_for_token(settings, tokens, token)
    if key is None or principal is None:
        message = (
            "This server has no API token configured: there is nothing to log in to"
            if key is None
            else "That is not the API token"
        )
        return render(
            request,
            "login.html",
            {"next": _local(next), "errors": {"token": message}},
            status_code=401,
        )
    response = _see_other(_local(next))
    response.set_cookie(
        ui_session.COOKIE_NAME,
        ui_session.new_session_cookie(key, principal),
        max_age=ui_session.SESSION_TTL_S,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: CsrfField = "") -> Response:
    # Not a write: a read-only session may end itself too.
    check_form_origin(request, ui_access(request), csrf_token)
    response = _see_other("/ui")
    response.delete_cookie(ui_session.COOKIE_NAME, path="/ui", httponly=True, samesite="strict")
    return response


# -- models and versions --------------------------------------------------------------------


@router.get("/upload")
def upload_page(request: Request, registry: RegistryDep, model_id: str = "") -> Response:
    check_read(ui_access(request))
    return render(
        request,
        "upload.html",
        {"model_id": model_id, "kind": "version" if model_id else "new", "errors": {}},
    )


@model_uploads.post("/upload")
def upload_model(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File()],
    name: Annotated[str, Form(max_length=200)],
    kind: Annotated[str, Form()] = "new",
    csrf_token: CsrfField = "",
) -> Response:
    access = ui_access(request)
    name = name.strip()
    check_write(request, access, csrf_token, model_id=name if kind == "version" else None)
    try:
        if not access.sees(name):
            # What the JSON API answers, whether or not the name is taken.
            raise Forbidden("This token may not create a model with this name")
        data = read_model_upload(file, settings)
        if kind == "version":
            record = registry.add_version(name, data)
        else:
            record = registry.create_model(name, data)
    except SpectralError as exc:
        on_name = isinstance(exc, (ModelExists, ModelNotFound, Forbidden)) or (
            isinstance(exc, InvalidInput) and "name" in exc.message
        )
        return render(
            request,
            "upload.html",
            {
                "model_id": name,
                "kind": kind,
                "errors": {"name" if on_name else "file": exc.message},
            },
            status_code=exc.status_code,
        )
    return _see_other(f"/ui/models/{record.model_id}/versions/{record.version}")


def _actor(access: UiAccess) -> str | None:
    """The name alias moves record: a scoped token's name (the admin token has none)."""
    return access.principal.token.name if access.principal.token is not None else None


def _alias_refused(
    request: Request,
    registry: Registry,
    model_id: str,
    exc: SpectralError,
    alias: str,
    version: int | None,
) -> Response:
    """The model page again, with the service's message next to the form that was used."""
    message = exc.message
    if isinstance(exc, AliasConflict):
        current = (exc.details or {}).get("current_version")
        where = f"v{current}" if current is not None else "nowhere"
        message = (
            f"{alias!r} points at {where} now, not where this page showed it: "
            "check the page again and retry"
        )
    context = model_context(registry, model_id)
    context["alias_error"] = {"version": version, "alias": alias, "message": message}
    return render(request, "model.html", context, status_code=exc.status_code)


@router.post("/models/{model_id}/aliases")
def move_alias(
    request: Request,
    model_id: str,
    registry: RegistryDep,
    alias: Annotated[str, Form(max_length=100)],
    version: Annotated[int, Form()],
    seen: Annotated[str, Form(max_length=100_000)] = "{}",
    csrf_token: CsrfField = "",
) -> Response:
    """Moves ``alias`` to ``version`` only if it still points where the page showed it."""
    access = ui_access(request)
    check_write(request, access, csrf_token, model_id=model_id)
    alias = alias.strip()
    try:
        shown = json.loads(seen)
    except ValueError:
        shown = {}
    expected = shown.get(alias) if isinstance(shown, dict) else None
    try:
        registry.set_alias(
            model_id,
            alias,
            version,
            if_version=expected if isinstance(expected, int) else None,
            actor=_actor(access),
        )
    except (AliasConflict, AliasNotFound, InvalidInput, VersionNotFound) as exc:
        return _alias_refused(request, registry, model_id, exc, alias, version)
    return _see_other(f"/ui/models/{model_id}")


@router.post("/models/{model_id}/aliases/{alias}/rollback")
def rollback_alias(
    request: Request,
    model_id: str,
    alias: str,
    registry: RegistryDep,
    if_version: Annotated[int, Form()],
    csrf_token: CsrfField = "",
) -> Response:
    """Moves ``alias`` back to where its latest move took it from, if it is still where the
    page showed it."""
    access = ui_access(request)
    check_write(request, access, csrf_token, model_id=model_id)
    try:
        registry.rollback_alias(model_id, alias, if_version=if_version, actor=_actor(access))
    except (AliasConflict, AliasNotFound, InvalidInput) as exc:
        return _alias_refused(request, registry, model_id, exc, alias, None)
    return _see_other(f"/ui/models/{model_id}")


# -- datasets -------------------------------------------------------------------------------


@router.get("/datasets/new")
def dataset_page(request: Request) -> Response:
    check_read(ui_access(request))
    return render(request, "dataset.html", {"errors": {}, "dataset": None})


@dataset_uploads.post("/datasets")
def upload_dataset(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File()],
    csrf_token: CsrfField = "",
) -> Response:
    check_write(request, ui_access(request), csrf_token)
    try:
        data = read_upload(file, settings.max_dataset_bytes)
        row, created = datasets.store_upload(registry.database, settings, data, file.filename)
        dataset = DatasetPublic.from_row(row)
    except SpectralError as exc:
        return render(
            request,
            "dataset.html",
            {"errors": {"file": exc.message}, "dataset": None},
            status_code=exc.status_code,
        )
    return render(request, "dataset.html", {"errors": {}, "dataset": dataset, "created": created})


# -- jobs -----------------------------------------------------------------------------------


@router.get("/prune")
def prune_page(
    request: Request,
    registry: RegistryDep,
    model_id: str = "",
    version: str = "",
    dataset_id: str = "",
) -> Response:
    access = ui_access(request)
    check_read(access)
    values = {"model_id": model_id, "version": version, "dataset_id": dataset_id}
    return render(request, "prune.html", _prune_context(registry, access, values, {}))


def _prune_context(
    registry: Registry, access: UiAccess, values: dict[str, str], errors: dict[str, str]
) -> dict[str, Any]:
    return {
        "models": [m.id for m in registry.list_models() if access.sees(m.id)],
        "values": {"method": "percentile", **values},
        "errors": errors,
    }


def _validation_errors(exc: ValidationError) -> dict[str, str]:
    """Pydantic's errors by form field; whole-request checks go to the field they name."""
    errors: dict[str, str] = {}
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        field = location[0] if location and location[0] in PRUNE_FIELDS else None
        if location[:1] == ["promote"]:
            field = _PROMOTE_FIELDS.get(location[1] if len(location) > 1 else "", "promote_alias")
        if field is None:
            # "method=metric needs a dataset_id": the field named last is the one to fix.
            named = [(message.rfind(f), f) for f in PRUNE_FIELDS if f in message]
            field = max(named)[1] if named else "form"
        errors.setdefault(field, message)
    return errors


_SUBMIT_ERROR_FIELDS: dict[type[SpectralError], str] = {
    ModelNotFound: "model_id",
    VersionNotFound: "version",
    DatasetNotFound: "dataset_id",
    DatasetRejected: "dataset_id",
    CompileConfigMissing: "dataset_id",
}


@router.post("/prune")
def submit_prune(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    broker: BrokerDep,
    model_id: FormText = "",
    version: FormText = "",
    method: FormText = "percentile",
    percentile: FormText = "",
    max_delta_percent: FormText = "",
    dataset_id: FormText = "",
    promote_alias: FormText = "",
    promote_max_drop: FormText = "",
    csrf_token: CsrfField = "",
) -> Response:
    access = ui_access(request)
    check_write(request, access, csrf_token)
    values = {
        "model_id": model_id,
        "version": version,
        "method": method,
        "percentile": percentile,
        "max_delta_percent": max_delta_percent,
        "dataset_id": dataset_id,
        "promote_alias": promote_alias,
        "promote_max_drop": promote_max_drop,
    }
    values = {field: value.strip() for field, value in values.items()}
    body: dict[str, Any] = {
        field: value
        for field, value in values.items()
        if value and not field.startswith("promote_")
    }
    if method == "percentile":
        # The budget field stays on the page for switching methods; percentile ignores it.
        body.pop("max_delta_percent", None)
    if values["promote_alias"] or values["promote_max_drop"]:
        gate = {"alias": values["promote_alias"], "max_drop_percent": values["promote_max_drop"]}
        body["promote"] = {key: value for key, value in gate.items() if value}
    if values["model_id"] and not access.sees(values["model_id"]):
        hidden = model_not_found(values["model_id"])
        return render(
            request,
            "prune.html",
            _prune_context(registry, access, values, {"model_id": hidden.message}),
            status_code=hidden.status_code,
        )
    try:
        prune_request = PruneRequest.model_validate(body)
    except ValidationError as exc:
        return render(
            request,
            "prune.html",
            _prune_context(registry, access, values, _validation_errors(exc)),
            status_code=422,
        )
    try:
        new = submission.submit_job(
            registry, prune_request, settings=settings, enqueue=broker.enqueue
        )
    except SpectralError as exc:
        field = _SUBMIT_ERROR_FIELDS.get(type(exc), "form")
        if isinstance(exc, InvalidInput) and exc.message.startswith("promote"):
            field = "promote_alias"
        return render(
            request,
            "prune.html",
            _prune_context(registry, access, values, {field: exc.message}),
            status_code=exc.status_code,
        )
    return _see_other(f"/ui/jobs/{new.job.id}")


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    request: Request, job_id: str, registry: RegistryDep, csrf_token: CsrfField = ""
) -> Response:
    access = ui_access(request)
    with registry.database.session() as session:
        job = visible_job(session, access.principal, job_id)
        check_write(request, access, csrf_token, model_id=job.model_id)
        state.request_cancel(session, job_id)
    return _see_other(f"/ui/jobs/{job_id}")
