"""The OpenAPI document, with every error status each operation can answer.

FastAPI documents only 200 and its own 422 shape, which the app does not send (its handler
answers ``{"error": {...}}`` like every other error). This module derives each operation's
error statuses from one table of rules: what the operation takes (path parameters, a JSON or
multipart body), its access level (`service.api.guard`), its tags and a few named operations.
Routers added later (e.g. more alias routes) are documented by the same rules, untouched.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from service.api.guard import api_route_contexts, route_access
from service.api.schemas import ErrorBody

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}

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


def error_statuses(route: APIRoute, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses ``operation`` (``method`` of ``route``) can answer."""
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
    if access is not None:
        statuses.add(401)
    if access in ("write", "metrics"):
        statuses.add(403)
    if access == "write":
        statuses.add(429)
    if access == "write" and "aliases" in route.tags:
        statuses.add(409)
    if "predict" in route.tags:
        statuses |= {400, 422, 429}
    return statuses


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": MEANINGS[status],
        "content": {"application/json": {"schema": ERROR_REF}},
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
    for context, route in api_route_contexts(app):
        if not route.include_in_schema:
            continue
        for method in sorted(context.methods or ()):
            operation = schema["paths"][context.path_format][method.lower()]
            responses = operation.setdefault("responses", {})
            for status in sorted(error_statuses(route, method, operation)):
                responses[str(status)] = _error_response(status)
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
