"""Typed FastAPI dependencies: settings, registry, model cache, metrics, broker and auth."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.broker import JobBroker
from service.errors import Unauthorized
from service.inference import ModelCache, Predictor
from service.metrics import ServiceMetrics
from service.registry import Registry
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False)


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def app_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def app_model_cache(request: Request) -> ModelCache:
    cache: ModelCache = request.app.state.model_cache
    return cache


def app_predictor(request: Request) -> Predictor:
    predictor: Predictor = request.app.state.predictor
    return predictor


def app_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


def app_broker(request: Request) -> JobBroker:
    broker: JobBroker = request.app.state.broker
    return broker


SettingsDep = Annotated[Settings, Depends(app_settings)]
RegistryDep = Annotated[Registry, Depends(app_registry)]
ModelCacheDep = Annotated[ModelCache, Depends(app_model_cache)]
MetricsDep = Annotated[ServiceMetrics, Depends(app_metrics)]
PredictorDep = Annotated[Predictor, Depends(app_predictor)]
BrokerDep = Annotated[JobBroker, Depends(app_broker)]
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _check_token(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, expected):
        raise Unauthorized(
            "Missing or invalid bearer token"
            if credentials is not None
            else "This request needs an 'Authorization: Bearer <token>' header"
        )


def require_write(settings: SettingsDep, credentials: CredentialsDep) -> None:
    """Writes need the bearer token whenever SPECTRAL_API_TOKEN is set."""
    _check_token(settings, credentials)


def require_read(settings: SettingsDep, credentials: CredentialsDep) -> None:
    """Reads need the bearer token only when SPECTRAL_PROTECT_READS is also true."""
    if settings.protect_reads:
        _check_token(settings, credentials)
