"""The TensorFlow Serving REST front end: ``:predict``, model status and metadata.

A model is addressed as TF Serving does: ``/v1/models/{name}`` (the native default: alias
``production`` if set, else the latest), ``/versions/{v}`` or ``/labels/{alias}`` (an alias of
the registry). The verb follows a colon in the last path segment (``{name}:predict``); the
other verbs TF Serving knows (``:classify``, ``:regress``) need tf.Example signatures that a
Keras model does not have, and answer 404 saying so. `service.api.protocols.tfserving`
decodes and encodes; the predict core resolves and predicts.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.deps import RegistryDep, require_read
from service.api.direct import direct
from service.api.limits import body_limit, check_json_limits
from service.api.params import VersionPath
from service.api.protocols import check_same_batch
from service.api.protocols import tfserving as codec
from service.api.schemas import TFServingMetadata, TFServingModelStatus
from service.errors import VersionNotFound
from service.serving import PredictCore
from service.settings import Settings
from service.versions import VersionRecord


class _SegmentConvertor(StringConvertor):
    """A path segment without a colon: ``{model_id}`` must not swallow ``name:predict``, or a
    GET there would read as the status of a model named "name:predict"."""

    regex = "[^/:]+"


register_url_convertor("segment", _SegmentConvertor())

router = APIRouter(
    prefix="/v1/models",
    tags=["tfserving"],
    dependencies=[Depends(require_read)],
    route_class=body_limit("max_request_bytes"),
)

_PREDICT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/TFServingPredictRequest"}}
        },
    },
    "responses": {
        "200": {
            "description": "'predictions' for a row-format request, 'outputs' for columnar.",
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/TFServingPredictResponse"}
                }
            },
        }
    },
}


def _core(request: Request) -> PredictCore:
    core: PredictCore = request.app.state.predict_core
    return core


def _json(value: Any) -> Response:
    return Response(codec.dumps(value), media_type="application/json")


async def _predict(request: Request, record: VersionRecord) -> Response:
    settings: Settings = request.app.state.settings
    body = await request.body()
    check_json_limits(
        body,
        max_depth=settings.max_json_depth,
        max_number_chars=settings.max_json_number_chars,
    )
    core = _core(request)
    signature = core.signature(record)
    decoded = codec.decode_request(body, signature)
    arrays = core.order_inputs(signature, decoded.inputs)
    check_same_batch(decoded.inputs)
    prediction = await core.predict(record, arrays)
    return Response(codec.encode_response(decoded, prediction), media_type="application/json")


@router.post("/{model_id:segment}:predict", tags=["predict"], openapi_extra=_PREDICT_DOC)
@direct
async def predict(request: Request, model_id: str) -> Response:
    return await _predict(request, await _core(request).resolve_async(model_id))


@router.post(
    "/{model_id:segment}/versions/{version:segment}:predict",
    tags=["predict"],
    openapi_extra=_PREDICT_DOC,
)
@direct
async def predict_version(request: Request, model_id: str, version: VersionPath) -> Response:
    return await _predict(request, await _core(request).resolve_async(model_id, version=version))


@router.post(
    "/{model_id:segment}/labels/{label:segment}:predict",
    tags=["predict"],
    openapi_extra=_PREDICT_DOC,
)
@direct
async def predict_label(request: Request, model_id: str, label: str) -> Response:
    return await _predict(request, await _core(request).resolve_async(model_id, alias=label))


def _unsupported(verb: str) -> StarletteHTTPException:
    return StarletteHTTPException(
        404,
        detail=f"':{verb}' is not served here: this server answers ':predict' (TF Serving's "
        "':classify' and ':regress' need tf.Example signatures, which Keras models lack)",
    )


# After the :predict routes: first match wins. GET too, so that a GET of "name:verb" is not
# read as the status of a model of that name.
@router.api_route("/{model_id:segment}:{verb}", methods=["GET", "POST"], include_in_schema=False)
@router.api_route(
    "/{model_id:segment}/versions/{version:segment}:{verb}",
    methods=["GET", "POST"],
    include_in_schema=False,
)
@router.api_route(
    "/{model_id:segment}/labels/{label:segment}:{verb}",
    methods=["GET", "POST"],
    include_in_schema=False,
)
def other_verb(model_id: str, verb: str) -> None:
    if verb == "predict":
        raise StarletteHTTPException(
            405, detail="':predict' takes a POST with a JSON body", headers={"Allow": "POST"}
        )
    raise _unsupported(verb)


def _status(request: Request, model_id: str, versions: list[int]) -> Any:
    # A version that resolves is servable (it loads on first use), as TF Serving's AVAILABLE,
    # unless this process failed to load it: then its reason is the status message.
    core = _core(request)
    entries = []
    for version in versions:
        status = core.status(model_id, version)
        failed = status.state == "failed"
        entries.append(
            codec.version_status(version, not failed, (status.reason or "") if failed else "")
        )
    return {"model_version_status": entries}


@router.get("/{model_id:segment}", response_model=TFServingModelStatus)
def model_status(request: Request, model_id: str, registry: RegistryDep) -> Any:
    versions = registry.get_model(model_id).versions
    if not versions:
        raise VersionNotFound(f"Model {model_id!r} has no versions")
    return _status(request, model_id, [v.version for v in reversed(versions)])


@router.get("/{model_id:segment}/versions/{version:segment}", response_model=TFServingModelStatus)
def version_status(request: Request, model_id: str, version: VersionPath) -> Any:
    return _status(request, model_id, [_core(request).resolve(model_id, version=version).version])


@router.get("/{model_id:segment}/labels/{label:segment}", response_model=TFServingModelStatus)
def label_status(request: Request, model_id: str, label: str) -> Any:
    return _status(request, model_id, [_core(request).resolve(model_id, alias=label).version])


def _metadata(request: Request, record: VersionRecord) -> Response:
    return _json(codec.metadata(_core(request).signature(record)))


@router.get("/{model_id:segment}/metadata", response_model=TFServingMetadata)
def metadata(request: Request, model_id: str) -> Response:
    return _metadata(request, _core(request).resolve(model_id))


@router.get(
    "/{model_id:segment}/versions/{version:segment}/metadata", response_model=TFServingMetadata
)
def version_metadata(request: Request, model_id: str, version: VersionPath) -> Response:
    return _metadata(request, _core(request).resolve(model_id, version=version))


@router.get("/{model_id:segment}/labels/{label:segment}/metadata", response_model=TFServingMetadata)
def label_metadata(request: Request, model_id: str, label: str) -> Response:
    return _metadata(request, _core(request).resolve(model_id, alias=label))
