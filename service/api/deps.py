"""Typed FastAPI dependencies: settings, registry, model cache, metrics, broker and auth."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.api.broker import JobBroker
from service.errors import Forbidden, JobNotFound, ModelNotFound, Unauthorized
from service.inference import ModelCache, Predictor
from service.jobs import table
from service.jobs.table import Job
from service.metrics import ServiceMetrics
from service.ratelimit import RateLimiter
from service.registry import Registry
from service.settings import Settings
from service.tokens import ADMIN, Access, Principal, TokenTable

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


def auth_configured(settings: Settings, tokens: TokenTable) -> bool:
    """Whether writes (and, with protect_reads, reads) need a token; the web UI asks for a
    login on the same condition."""
    return settings.api_token is not None or len(tokens) > 0


def identify(request: Request) -> Principal:
    """Who the bearer token names: the admin, a scoped token, or anonymous (no or unknown
    token; whether anonymous may go on is `authorize`'s call)."""
    settings: Settings = request.app.state.settings
    tokens: TokenTable = request.app.state.tokens
    client = request.client.host if request.client else ""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return Principal("anonymous", client=client)
    principal = principal_for_token(settings, tokens, given)
    return principal if principal is not None else Principal("anonymous", client=client)


def principal_for_token(settings: Settings, tokens: TokenTable, token: str) -> Principal | None:
    """Whom ``token`` names: the admin, a scoped token, or None (unknown); a bearer header and
    the web UI's login form are checked alike.

    The admin token is compared in constant time, then every token-file entry in constant time
    (`TokenTable.find`).
    """
    if settings.api_token is not None and secrets.compare_digest(
        token.encode(), settings.api_token.get_secret_value().encode()
    ):
        return ADMIN
    entry = tokens.find(token)
    return Principal("scoped", token=entry) if entry is not None else None


def visible_job(session: Session, principal: Principal, job_id: str) -> Job:
    """The job, or `JobNotFound` (what `table.get_job` answers for an unknown id) when its
    model is outside the principal's scope: the job's existence stays hidden."""
    job = table.get_job(session, job_id)
    if not principal.sees(job.model_id):
        raise JobNotFound(f"No job with id {job_id!r}")
    return job


def model_not_found(model_id: str) -> ModelNotFound:
    """Exactly what the registry answers for a model that does not exist: a token must not
    tell a hidden model from a missing one."""
    return ModelNotFound(f"No model named {model_id!r}")


def authorize(request: Request, access: Access | Literal["metrics"]) -> Principal:
    """Checks the caller may make this request, before its body is read.

    Order: credentials (401), then a ``model_id`` in the path outside the token's scope (404,
    as if it did not exist), then read-only tokens on writes (403), then rate limits (429).
    """
    settings: Settings = request.app.state.settings
    tokens: TokenTable = request.app.state.tokens
    principal = identify(request)
    has_token = "authorization" in request.headers
    needs_token = auth_configured(settings, tokens) and (
        access == "write" or settings.protect_reads
    )
    if needs_token and principal.kind == "anonymous":
        raise Unauthorized(
            "Missing or invalid bearer token"
            if has_token
            else "This request needs an 'Authorization: Bearer <token>' header"
        )
    model_id = request.path_params.get("model_id")
    if isinstance(model_id, str) and not principal.sees(model_id):
        raise model_not_found(model_id)
    if access == "write" and principal.kind == "scoped" and not principal.can_write:
        raise Forbidden("This token is read-only")
    if access == "metrics" and settings.protect_reads and principal.kind != "admin":
        # The metrics name every model: only the admin token may read them on a guarded server.
        raise Forbidden("Metrics need the admin token (SPECTRAL_API_TOKEN)")
    limiters: RateLimiters = request.app.state.rate_limiters
    if access == "write" and limiters.writes is not None:
        limiters.writes.acquire(principal.rate_key)
    if "predict" in getattr(request.scope.get("route"), "tags", ()) and limiters.predicts:
        limiters.predicts.acquire(principal.rate_key)
    return principal


@dataclass(frozen=True)
class RateLimiters:
    writes: RateLimiter | None
    predicts: RateLimiter | None

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiters:
        writes = settings.rate_limit_writes_per_min
        predicts = settings.rate_limit_predicts_per_s
        return cls(
            writes=RateLimiter("write", writes, 60.0) if writes else None,
            predicts=RateLimiter("predict", predicts, 1.0) if predicts else None,
        )


def _principal(request: Request, access: Access | Literal["metrics"]) -> Principal:
    # The request guard (service.api.guard) authorizes before the body is read and leaves
    # the principal here; authorizing again would count the request twice against its limit.
    principal = getattr(request.state, "principal", None)
    if principal is None:
        principal = authorize(request, access)
        request.state.principal = principal
    assert isinstance(principal, Principal)
    return principal


# The credentials parameter declares the bearer scheme in the OpenAPI; `identify` reads it.
# Coroutines on purpose: FastAPI runs a plain-function dependency on its thread pool, a hop that
# cost predict more than its forward pass. None does I/O: the guard has already authorized and
# left the principal on the request.
async def require_write(request: Request, _credentials: CredentialsDep) -> Principal:
    """Writes need a token whenever SPECTRAL_API_TOKEN or SPECTRAL_TOKENS_FILE is set; a
    scoped token must have write access and cover the path's model."""
    return _principal(request, "write")


async def require_read(request: Request, _credentials: CredentialsDep) -> Principal:
    """Reads need a token only when SPECTRAL_PROTECT_READS is also true; a scoped token sees
    only its models whatever that setting."""
    return _principal(request, "read")


async def require_metrics_read(request: Request, _credentials: CredentialsDep) -> Principal:
    """Like reads, but on a guarded server only the admin token (metrics name every model)."""
    return _principal(request, "metrics")


ACCESS_OF_DEPENDENCY: dict[Callable[..., Any], Access | Literal["metrics"]] = {
    require_write: "write",
    require_read: "read",
    require_metrics_read: "metrics",
}

WriterDep = Annotated[Principal, Depends(require_write)]
ReaderDep = Annotated[Principal, Depends(require_read)]
