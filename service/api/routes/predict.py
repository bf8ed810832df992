"""Predictions: POST (JSON body) and GET (URL-encoded JSON), on the default or a pinned version.

``/models/{id}/predict`` serves the version aliased ``production`` if there is one, else the
latest version; ``/models/{id}/versions/{v}/predict`` serves version ``v``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from service.api.deps import PredictorDep, RegistryDep, SettingsDep, require_read
from service.api.limits import body_limit, load_json_limited
from service.api.params import VersionPath
from service.api.schemas import PredictRequest, PredictResponse
from service.settings import Settings

router = APIRouter(
    prefix="/models",
    tags=["predict"],
    dependencies=[Depends(require_read)],
    route_class=body_limit("max_request_bytes"),
)

DEFAULT_ALIAS = "production"

InputsQuery = Annotated[
    str, Query(description="URL-encoded JSON of the inputs, e.g. [[0.0, 1.0, ...]]")
]


def _parse_query(inputs: str, settings: Settings) -> Any:
    return load_json_limited(inputs, settings, "Query parameter 'inputs'")


@router.post("/{model_id}/predict", response_model=PredictResponse)
def predict_post(
    model_id: str, body: PredictRequest, registry: RegistryDep, predictor: PredictorDep
) -> PredictResponse:
    record = registry.resolve_serving(model_id, DEFAULT_ALIAS)
    outputs = predictor.predict(record, body.inputs)
    return PredictResponse(model_id=model_id, version=record.version, outputs=outputs)


@router.get("/{model_id}/predict", response_model=PredictResponse)
def predict_get(
    model_id: str,
    inputs: InputsQuery,
    registry: RegistryDep,
    predictor: PredictorDep,
    settings: SettingsDep,
) -> PredictResponse:
    record = registry.resolve_serving(model_id, DEFAULT_ALIAS)
    outputs = predictor.predict(record, _parse_query(inputs, settings))
    return PredictResponse(model_id=model_id, version=record.version, outputs=outputs)


@router.post("/{model_id}/versions/{version}/predict", response_model=PredictResponse)
def predict_version_post(
    model_id: str,
    version: VersionPath,
    body: PredictRequest,
    registry: RegistryDep,
    predictor: PredictorDep,
) -> PredictResponse:
    outputs = predictor.predict(registry.resolve(model_id, version), body.inputs)
    return PredictResponse(model_id=model_id, version=version, outputs=outputs)


@router.get("/{model_id}/versions/{version}/predict", response_model=PredictResponse)
def predict_version_get(
    model_id: str,
    version: VersionPath,
    inputs: InputsQuery,
    registry: RegistryDep,
    predictor: PredictorDep,
    settings: SettingsDep,
) -> PredictResponse:
    outputs = predictor.predict(registry.resolve(model_id, version), _parse_query(inputs, settings))
    return PredictResponse(model_id=model_id, version=version, outputs=outputs)
