"""The Open Inference Protocol (KServe V2) REST front end: health, metadata and infer.

Only translation lives here: `service.api.protocols.v2` decodes the wire format (JSON or
binary tensors), the predict core (``app.state.predict_core``) resolves the version and
predicts, the codec encodes. Versions are numbers, as the protocol says; an alias is served
through TF Serving's ``/v1/models/{name}/labels/{alias}`` or the native routes. An
unversioned request gets the native default: alias ``production`` if set, else the latest.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import RegistryDep, require_read
from service.api.direct import direct
from service.api.limits import body_limit, check_json_limits
from service.api.params import VersionPath
from service.api.protocols import check_same_batch
from service.api.protocols import v2 as codec
from service.api.schemas import V2ModelMetadata, V2ServerMetadata
from service.errors import InvalidInput
from service.serving import PredictCore
from service.settings import Settings

logger = logging.getLogger(__name__)

_limited = body_limit("max_request_bytes")
router = APIRouter(prefix="/v2", tags=["v2"], route_class=_limited)
# Model routes name their path parameter ``model_id``: the request guard scopes tokens by it.
models = APIRouter(dependencies=[Depends(require_read)], route_class=_limited)

SERVER_NAME = "spectral"
EXTENSIONS = ["binary_tensor_data"]
# What server readiness needs: versions resolve (database) and load (artifact store).
_READY_CHECKS = {"database", "artifact_store"}
_LIVE = b'{"live":true}'

_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/V2InferenceRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Binary tensor data extension: the first "
                "Inference-Header-Content-Length bytes are the JSON request, then the "
                "inputs' raw little-endian bytes in input order.",
            },
        },
    },
    "responses": {
        "200": {
            "description": "The outputs; binary ones after the JSON header, whose length is "
            "the Inference-Header-Content-Length response header.",
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/V2InferenceResponse"}
                },
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
}


def _core(request: Request) -> PredictCore:
    core: PredictCore = request.app.state.predict_core
    return core


@router.get("", response_model=V2ServerMetadata)
def server_metadata(request: Request) -> V2ServerMetadata:
    return V2ServerMetadata(
        name=SERVER_NAME, version=request.app.version, extensions=list(EXTENSIONS)
    )


@router.get("/health/live")
async def server_live() -> Response:
    """200 while the process serves requests (kept minimal: probes call it often)."""
    return Response(_LIVE, media_type="application/json")


@router.get("/health/ready")
def server_ready(request: Request) -> JSONResponse:
    """200 when the database and the artifact store answer (versions resolve and load);
    400 otherwise, as the protocol says for a false health check."""
    ready = True
    for name, check in request.app.state.readiness_checks:
        if name not in _READY_CHECKS:
            continue
        try:
            check()
        except Exception as exc:  # a failing check must be reported, whatever it raised
            logger.warning("readiness check %s failed: %s", name, exc)
            ready = False
    return JSONResponse({"ready": ready}, status_code=200 if ready else 400)


def _metadata(request: Request, registry: RegistryDep, model_id: str, version: int | None) -> Any:
    core = _core(request)
    record = core.resolve(model_id, version=version)
    described = codec.tensor_metadata(core.signature(record))
    versions = [str(v.version) for v in registry.get_model(model_id).versions]
    return {"name": model_id, "versions": versions, "platform": "keras", **described}


@models.get("/models/{model_id}", response_model=V2ModelMetadata)
def model_metadata(request: Request, model_id: str, registry: RegistryDep) -> Any:
    return _metadata(request, registry, model_id, None)


@models.get("/models/{model_id}/versions/{version}", response_model=V2ModelMetadata)
def model_version_metadata(
    request: Request, model_id: str, version: VersionPath, registry: RegistryDep
) -> Any:
    return _metadata(request, registry, model_id, version)


def _ready(request: Request, model_id: str, version: int | None) -> JSONResponse:
    # A version that resolves is servable: it loads on first use, unless this process failed
    # to load it. Unknown ones answer 404.
    core = _core(request)
    record = core.resolve(model_id, version=version)
    ready = core.status(model_id, record.version).state != "failed"
    # The protocol's health checks answer false with a 4xx (V2 clients read the status code).
    return JSONResponse({"name": model_id, "ready": ready}, status_code=200 if ready else 400)


@models.get("/models/{model_id}/ready")
def model_ready(request: Request, model_id: str) -> JSONResponse:
    return _ready(request, model_id, None)


@models.get("/models/{model_id}/versions/{version}/ready")
def model_version_ready(request: Request, model_id: str, version: VersionPath) -> JSONResponse:
    return _ready(request, model_id, version)


async def _infer(request: Request, model_id: str, version: int | None) -> Response:
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise InvalidInput(
            f"Content-Encoding {request.headers['content-encoding']!r} is not supported; "
            "send the body uncompressed"
        )
    settings: Settings = request.app.state.settings
    body = await request.body()
    header, binary = codec.split_body(body, request.headers.get(codec.HEADER_LENGTH))
    # The JSON part alone: the binary tensors after it are never parsed as JSON.
    check_json_limits(
        header,
        max_depth=settings.max_json_depth,
        max_number_chars=settings.max_json_number_chars,
    )
    decoded = codec.decode_request(header, binary)
    core = _core(request)
    record = await core.resolve_async(model_id, version=version)
    signature = core.signature(record)
    codec.check_outputs(decoded, signature)
    check_same_batch(decoded.inputs)
    prediction = await core.predict(record, core.order_inputs(signature, decoded.inputs))
    content, header_length = codec.encode_response(decoded, prediction, model_id)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


@models.post("/models/{model_id}/infer", tags=["predict"], openapi_extra=_INFER_DOC)
@direct
async def infer(request: Request, model_id: str) -> Response:
    """Predicts with the default version (alias ``production``, else the latest)."""
    return await _infer(request, model_id, None)


@models.post(
    "/models/{model_id}/versions/{version}/infer", tags=["predict"], openapi_extra=_INFER_DOC
)
@direct
async def infer_version(request: Request, model_id: str, version: VersionPath) -> Response:
    return await _infer(request, model_id, version)


router.include_router(models)
