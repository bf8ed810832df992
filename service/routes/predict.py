"""Predictions: POST (JSON body) and GET (URL-encoded JSON), on the default or a pinned version.

``/models/{id}/predict`` serves the version aliased ``production`` if there is one, else the
latest version; ``/models/{id}/versions/{v}/predict`` serves version ``v``.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from service.deps import MetricsDep, ModelCacheDep, RegistryDep, SettingsDep, require_read
from service.errors import InvalidInput, SpectralError
from service.registry import Registry, VersionRecord
from service.schemas import PredictRequest, PredictResponse

router = APIRouter(prefix="/models", tags=["predict"], dependencies=[Depends(require_read)])

DEFAULT_ALIAS = "production"

InputsQuery = Annotated[
    str, Query(description="URL-encoded JSON of the inputs, e.g. [[0.0, 1.0, ...]]")
]


class InvalidJSON(InvalidInput):
    status_code = 400
    code = "invalid_json"


def _default_version(registry: Registry, model_id: str) -> VersionRecord:
    return registry.resolve_serving(model_id, DEFAULT_ALIAS)


def _parse_query(inputs: str) -> Any:
    try:
        return json.loads(inputs)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"Query parameter 'inputs' is not valid JSON: {exc}") from exc


def _predict(
    record: VersionRecord,
    inputs: Any,
    cache: ModelCacheDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> PredictResponse:
    labels = (record.model_id, str(record.version))
    start = time.perf_counter()
    try:
        outputs = cache.get(record).predict(inputs, settings.max_batch)
    except SpectralError as exc:
        metrics.predictions.labels(*labels, exc.code).inc()
        raise
    metrics.predict_latency.labels(*labels).observe(time.perf_counter() - start)
    metrics.predictions.labels(*labels, "ok").inc()
    return PredictResponse(model_id=record.model_id, version=record.version, outputs=outputs)


@router.post("/{model_id}/predict", response_model=PredictResponse)
def predict_post(
    model_id: str,
    body: PredictRequest,
    registry: RegistryDep,
    cache: ModelCacheDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> PredictResponse:
    record = _default_version(registry, model_id)
    return _predict(record, body.inputs, cache, settings, metrics)


@router.get("/{model_id}/predict", response_model=PredictResponse)
def predict_get(
    model_id: str,
    inputs: InputsQuery,
    registry: RegistryDep,
    cache: ModelCacheDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> PredictResponse:
    record = _default_version(registry, model_id)
    return _predict(record, _parse_query(inputs), cache, settings, metrics)


@router.post("/{model_id}/versions/{version}/predict", response_model=PredictResponse)
def predict_version_post(
    model_id: str,
    version: int,
    body: PredictRequest,
    registry: RegistryDep,
    cache: ModelCacheDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> PredictResponse:
    record = registry.resolve(model_id, version)
    return _predict(record, body.inputs, cache, settings, metrics)


@router.get("/{model_id}/versions/{version}/predict", response_model=PredictResponse)
def predict_version_get(
    model_id: str,
    version: int,
    inputs: InputsQuery,
    registry: RegistryDep,
    cache: ModelCacheDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> PredictResponse:
    record = registry.resolve(model_id, version)
    return _predict(record, _parse_query(inputs), cache, settings, metrics)
