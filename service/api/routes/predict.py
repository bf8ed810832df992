"""Predictions: POST (JSON body) and GET (URL-encoded JSON), on the default or a pinned version.

``/models/{id}/predict`` serves the version aliased ``production`` if there is one, else the
latest version; ``/models/{id}/versions/{v}/predict`` serves version ``v``. Both go through the
predict core (`service.serving`): resolution from memory, folded forward, adaptive batching.
The body is decoded and the response encoded with orjson, outside pydantic: the schemas below
document them in OpenAPI.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from service.api.deps import require_read
from service.api.direct import direct
from service.api.limits import body_limit, load_json_limited
from service.api.params import VersionPath
from service.api.schemas import PredictRequest, PredictResponse
from service.errors import InvalidInput, SpectralError
from service.inference import validate_inputs
from service.serving import PredictCore
from service.versions import VersionRecord

router = APIRouter(
    prefix="/models",
    tags=["predict"],
    dependencies=[Depends(require_read)],
    route_class=body_limit("max_request_bytes"),
)

InputsQuery = Annotated[
    str, Query(description="URL-encoded JSON of the inputs, e.g. [[0.0, 1.0, ...]]")
]

_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}


def _decode_body(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses NaN and Infinity; the stdlib parses them, so that the inputs check can
    # say they are not finite.
    try:
        return json.loads(body)
    except ValueError as exc:
        raise InvalidInput(f"Request body is not valid JSON: {exc}") from exc


def _inputs_of(payload: Any) -> Any:
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InvalidInput("Request body needs an object with 'inputs', e.g. {\"inputs\": [[...]]}")
    return payload["inputs"]


async def _serve(request: Request, record: VersionRecord, inputs: Any) -> Response:
    core: PredictCore = request.app.state.predict_core
    try:
        arrays = validate_inputs(inputs, record.metadata["inputs"], core.predictor.max_batch)
    except SpectralError as exc:
        core.record_error(record, exc)
        raise
    prediction = await core.predict(record, arrays)
    outputs: Any
    if len(prediction.outputs) == 1:
        outputs = prediction.outputs[0]
    else:
        names = prediction.model_output_names or [
            f"output_{i}" for i in range(len(prediction.outputs))
        ]
        outputs = dict(zip(names, prediction.outputs, strict=False))
    content = orjson.dumps(
        {"model_id": prediction.model_id, "version": prediction.version, "outputs": outputs},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return Response(content, media_type="application/json")


def _query_inputs(request: Request, inputs: str) -> Any:
    return load_json_limited(inputs, request.app.state.settings, "Query parameter 'inputs'")


@router.post("/{model_id}/predict", response_model=PredictResponse, openapi_extra=_BODY)
@direct
async def predict_post(model_id: str, request: Request) -> Response:
    core: PredictCore = request.app.state.predict_core
    record = await core.resolve_async(model_id)
    return await _serve(request, record, _inputs_of(_decode_body(await request.body())))


@router.get("/{model_id}/predict", response_model=PredictResponse)
async def predict_get(model_id: str, inputs: InputsQuery, request: Request) -> Response:
    core: PredictCore = request.app.state.predict_core
    record = await core.resolve_async(model_id)
    return await _serve(request, record, _query_inputs(request, inputs))


@router.post(
    "/{model_id}/versions/{version}/predict", response_model=PredictResponse, openapi_extra=_BODY
)
@direct
async def predict_version_post(model_id: str, version: VersionPath, request: Request) -> Response:
    core: PredictCore = request.app.state.predict_core
    record = await core.resolve_async(model_id, version=version)
    return await _serve(request, record, _inputs_of(_decode_body(await request.body())))


@router.get("/{model_id}/versions/{version}/predict", response_model=PredictResponse)
async def predict_version_get(
    model_id: str, version: VersionPath, inputs: InputsQuery, request: Request
) -> Response:
    core: PredictCore = request.app.state.predict_core
    record = await core.resolve_async(model_id, version=version)
    return await _serve(request, record, _query_inputs(request, inputs))
