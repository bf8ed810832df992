"""Models and their versions: upload, list, metadata, artifact download, pruning reports."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile, status
from fastapi.responses import JSONResponse, Response

from service.api.deps import (
    ReaderDep,
    RegistryDep,
    SettingsDep,
    WriterDep,
    require_read,
    require_write,
)
from service.api.limits import MULTIPART_OVERHEAD, body_limit, read_model_upload
from service.api.params import VersionPath
from service.api.schemas import ModelPublic, ModelsPublic, VersionPublic, VersionsPublic
from service.errors import Forbidden, ReportNotFound
from service.registry import SLUG

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/models",
    tags=["models"],
    route_class=body_limit("max_upload_bytes", overhead=MULTIPART_OVERHEAD),
)

ReadAuth = [Depends(require_read)]
WriteAuth = [Depends(require_write)]

MaxBatchSizeForm = Annotated[
    int | None,
    Form(
        ge=1,
        le=65536,
        description="This version's adaptive batching limit in rows (default: the server's "
        "SPECTRAL_BATCH_MAX_ROWS). 1 turns batching off for it.",
    ),
]
MaxDelayForm = Annotated[
    float | None,
    Form(
        ge=0,
        le=1000,
        description="How long, in ms, a forward waits for more rows of this version (default: "
        "the server's SPECTRAL_BATCH_MAX_DELAY_MS).",
    ),
]


def serving_limits(max_batch_size: int | None, max_delay_ms: float | None) -> dict[str, Any]:
    """A version's own batching limits, as `service.serving.batch_limits` reads them."""
    limits: dict[str, Any] = {}
    if max_batch_size is not None:
        limits["max_batch_size"] = max_batch_size
    if max_delay_ms is not None:
        limits["max_delay_ms"] = max_delay_ms
    return limits


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=VersionPublic, dependencies=WriteAuth
)
def create_model(
    registry: RegistryDep,
    settings: SettingsDep,
    principal: WriterDep,
    response: Response,
    file: Annotated[UploadFile, File(description="A .keras model file.")],
    name: Annotated[
        str,
        Form(
            description="The model's id: a lowercase slug (letters, digits, '-', '_').",
            pattern=SLUG.pattern,
            max_length=100,
        ),
    ],
    max_batch_size: MaxBatchSizeForm = None,
    max_delay_ms: MaxDelayForm = None,
) -> VersionPublic:
    """Registers a new model; the upload becomes version 1."""
    if not principal.sees(name):
        # 403 whether or not the name is taken, so the answer tells nothing about other models.
        raise Forbidden("This token may not create a model with this name")
    record = registry.create_model(
        name,
        read_model_upload(file, settings),
        serving=serving_limits(max_batch_size, max_delay_ms),
    )
    response.headers["Location"] = f"/models/{record.model_id}/versions/{record.version}"
    return VersionPublic.from_record(record)


@router.get("", response_model=ModelsPublic, dependencies=ReadAuth)
def list_models(registry: RegistryDep, principal: ReaderDep) -> ModelsPublic:
    """Every model the caller's token may see."""
    models = [ModelPublic.from_record(m) for m in registry.list_models() if principal.sees(m.id)]
    return ModelsPublic(data=models, count=len(models))


@router.get("/{model_id}", response_model=ModelPublic, dependencies=ReadAuth)
def get_model(model_id: str, registry: RegistryDep) -> ModelPublic:
    """The model with all its versions, its aliases and its latest version number."""
    return ModelPublic.from_record(registry.get_model(model_id))


@router.post(
    "/{model_id}/versions",
    status_code=status.HTTP_201_CREATED,
    response_model=VersionPublic,
    dependencies=WriteAuth,
)
def add_version(
    model_id: str,
    registry: RegistryDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description="A .keras model file.")],
    max_batch_size: MaxBatchSizeForm = None,
    max_delay_ms: MaxDelayForm = None,
) -> VersionPublic:
    """Uploads the next version of a model."""
    record = registry.add_version(
        model_id,
        read_model_upload(file, settings),
        serving=serving_limits(max_batch_size, max_delay_ms),
    )
    response.headers["Location"] = f"/models/{record.model_id}/versions/{record.version}"
    return VersionPublic.from_record(record)


@router.get("/{model_id}/versions", response_model=VersionsPublic, dependencies=ReadAuth)
def list_versions(model_id: str, registry: RegistryDep) -> VersionsPublic:
    versions = [VersionPublic.from_record(v) for v in registry.get_model(model_id).versions]
    return VersionsPublic(data=versions, count=len(versions))


@router.get("/{model_id}/versions/{version}", response_model=VersionPublic, dependencies=ReadAuth)
def get_version(model_id: str, version: VersionPath, registry: RegistryDep) -> VersionPublic:
    """Shapes, dtypes, parameter count, Spectral units, size, checksum, parent and lineage."""
    return VersionPublic.from_record(registry.resolve(model_id, version))


@router.get(
    "/{model_id}/versions/{version}/artifact",
    response_class=Response,
    dependencies=ReadAuth,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_artifact(model_id: str, version: VersionPath, registry: RegistryDep) -> Response:
    """The exact bytes that were uploaded (checksum verified)."""
    record = registry.resolve(model_id, version)
    return Response(
        registry.read_artifact(record),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{model_id}-v{version}.keras"',
            "ETag": f'"{record.sha256}"',
        },
    )


@router.get("/{model_id}/versions/{version}/report", dependencies=ReadAuth)
def get_report(model_id: str, version: VersionPath, registry: RegistryDep) -> JSONResponse:
    """The pruning report of a version a job produced."""
    record = registry.resolve(model_id, version)
    if record.report is None:
        raise ReportNotFound(f"Model {model_id!r} version {version} has no report")
    return JSONResponse(record.report)


@router.get(
    "/{model_id}/versions/{version}/report.png",
    response_class=Response,
    dependencies=ReadAuth,
    responses={200: {"content": {"image/png": {}}}},
)
def get_report_png(model_id: str, version: VersionPath, registry: RegistryDep) -> Response:
    record = registry.resolve(model_id, version)
    return Response(registry.read_report_png(record), media_type="image/png")
