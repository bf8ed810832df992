"""The OpenAPI document, with every error status each operation can answer.

FastAPI documents only 200 and its own 422 shape, which the app does not send (its handler
answers ``{"error": {...}}`` like every other error). This module derives each operation's
error statuses from one table of rules: what the operation takes (path parameters, a JSON or
multipart body), its access level (`service.api.guard`), its tags, a few named operations, and
this deployment's settings (401 only where a token is required, 429 only where a rate limit is
set). Routers added later (e.g. more alias routes) are documented by the same rules, untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from service.api.errors import is_protocol_path
from service.api.guard import api_route_contexts, route_access
from service.api.schemas import (
    ErrorBody,
    ProtocolErrorBody,
    TFServingPredictRequest,
    TFServingPredictResponse,
    V2InferenceRequest,
    V2InferenceResponse,
)
from service.settings import Settings

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
PROTOCOL_ERROR_REF = {"$ref": "#/components/schemas/ProtocolErrorBody"}
# Bodies the V2 and TF Serving routes parse themselves (orjson) and reference by name.
PROTOCOL_SCHEMAS: list[type[BaseModel]] = [
    ProtocolErrorBody,
    V2InferenceRequest,
    V2InferenceResponse,
    TFServingPredictRequest,
    TFServingPredictResponse,
]

# What each status means here, as the document says it.
MEANINGS = {
    400: "Malformed input: invalid or too deeply nested JSON, an over-long number, or an "
    "upload that is not a safe .keras/.npz file.",
    401: "Missing or invalid bearer token (only when the server has tokens configured).",
    403: "The token is valid but its scope does not allow this (read-only, or a model name "
    "outside its patterns).",
    404: "Not found - also what a scoped token gets for a model outside its scope.",
    409: "Conflicts with the current state (name taken, idempotency key reused, job finished, "
    "alias moved).",
    413: "Request body over the server's limit.",
    415: "The upload is not a .keras file.",
    422: "Invalid parameters or body (the details list each problem), or inputs the model "
    "cannot take.",
    429: "Rate limit of this token (or address) spent; retry after Retry-After seconds.",
    503: "A service this operation needs (the job broker) is unavailable.",
}

# Statuses of named operations that the rules below cannot infer.
EXTRA_STATUSES: dict[tuple[str, str], set[int]] = {
    ("POST", "/models"): {409},
    ("POST", "/prune"): {404, 409, 503},
    ("POST", "/jobs/{job_id}/cancel"): {409},
}


@dataclass(frozen=True)
class AuthModel:
    """What this deployment's settings make of auth, rate limits and token scopes."""

    tokens_configured: bool
    scoped_tokens: bool
    protect_reads: bool
    write_limit: bool
    predict_limit: bool

    @classmethod
    def of(cls, app: FastAPI) -> AuthModel:
        settings: Settings = app.state.settings
        scoped = len(app.state.tokens) > 0
        return cls(
            tokens_configured=settings.api_token is not None or scoped,
            scoped_tokens=scoped,
            protect_reads=settings.protect_reads,
            write_limit=settings.rate_limit_writes_per_min is not None,
            predict_limit=settings.rate_limit_predicts_per_s is not None,
        )

    def needs_token(self, access: str | None) -> bool:
        if access is None or not self.tokens_configured:
            return False
        return access == "write" or self.protect_reads


def error_statuses(
    route: APIRoute, method: str, operation: dict[str, Any], auth: AuthModel
) -> set[int]:
    """The error statuses ``operation`` (``method`` of ``route``) can answer here."""
    statuses: set[int] = set(EXTRA_STATUSES.get((method, route.path_format), ()))
    parameters = operation.get("parameters", [])
    body_types = set(operation.get("requestBody", {}).get("content", {}))
    if parameters or body_types:
        statuses.add(422)
    if any(p.get("in") == "path" for p in parameters):
        statuses.add(404)
    if body_types:
        statuses |= {400, 413}
    if "multipart/form-data" in body_types and "models" in route.tags:
        statuses.add(415)
    access = route_access(route)
    if auth.needs_token(access):
        statuses.add(401)
    if (access == "write" and auth.scoped_tokens) or (access == "metrics" and auth.protect_reads):
        statuses.add(403)
    if (access == "write" and auth.write_limit) or ("predict" in route.tags and auth.predict_limit):
        statuses.add(429)
    if access == "write" and "aliases" in route.tags:
        statuses.add(409)
    if "predict" in route.tags:
        statuses |= {400, 422}
    return statuses


def _error_response(status: int, protocol: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": MEANINGS[status],
        "content": {"application/json": {"schema": PROTOCOL_ERROR_REF if protocol else ERROR_REF}},
    }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    if status == 429:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds until the next request may succeed.",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


def _readiness_failure() -> dict[str, Any]:
    return {
        "description": "A readiness check failed; ``checks`` names it.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["status", "checks"],
                    "properties": {
                        "status": {"type": "string", "enum": ["not_ready"]},
                        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                }
            }
        },
    }


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error_schema.pop("$defs", {}))
    components["ErrorBody"] = error_schema
    for model in PROTOCOL_SCHEMAS:
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    auth = AuthModel.of(app)
    for context, route in api_route_contexts(app):
        if not route.include_in_schema:
            continue
        for method in sorted(context.methods or ()):
            operation = schema["paths"][context.path_format][method.lower()]
            if "security" in operation and not auth.needs_token(route_access(route)):
                # A token is accepted (and scopes a token's view) but not required here.
                operation["security"] = [{}, *operation["security"]]
            responses = operation.setdefault("responses", {})
            statuses = error_statuses(route, method, operation, auth)
            protocol = is_protocol_path(context.path_format or "")
            if protocol and 422 in statuses:
                # The serving protocols answer 400 where the native API answers 422.
                statuses = (statuses - {422}) | {400}
                responses.pop("422", None)
            for status in sorted(statuses):
                responses[str(status)] = _error_response(status, protocol)
    schema["paths"]["/readyz"]["get"]["responses"]["503"] = _readiness_failure()
    # FastAPI's validation-error shapes are no longer referenced: every 422 is an ErrorBody.
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serves `build_openapi`'s document (built once, on first request) at /openapi.json."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
