"""The exception handlers: every failure answers ``{"error": {"code", "message", "details"}}``,
except under the serving protocols' paths (``/v2``, ``/v1``: Open Inference V2 and TF Serving),
which answer ``{"error": "<message>"}`` as those protocols specify, with the same message.

The protocols also say 400 for a request the server cannot act on, where the native API says
422: under their paths 422 becomes 400. Every other status is the hierarchy's own.

The error classes themselves live in `service.errors`; this module only renders them.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from service.errors import PayloadTooLarge, RateLimited, SpectralError

logger = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: PayloadTooLarge.code}


PROTOCOL_PREFIXES = ("/v2", "/v1")


def is_protocol_path(path: str) -> bool:
    """Whether ``path`` belongs to a serving protocol with its own error shape."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PROTOCOL_PREFIXES)


def _body(code: str, message: str, details: object = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "details": details}}


class ErrorResponse(JSONResponse):
    """An error in the native shape that, sent as an ASGI app for a protocol path, answers in
    that protocol's shape instead: the request guard sends its refusals this way, before any
    route is chosen, and gets the same rule as the handlers."""

    def __init__(
        self, message: str, body: dict[str, object], status_code: int, headers: dict[str, str]
    ) -> None:
        super().__init__(body, status_code=status_code, headers=headers or None)
        self.message = message
        self.extra_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_protocol_path(scope["path"]):
            protocol = protocol_error(self.message, self.status_code, self.extra_headers)
            await protocol(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def protocol_error(
    message: str, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    """``{"error": message}``, the serving protocols' error body."""
    return JSONResponse(
        {"error": message}, status_code=400 if status_code == 422 else status_code, headers=headers
    )


def error_response(exc: SpectralError) -> JSONResponse:
    """The response for ``exc``, with the headers its status calls for (401, 429)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    return ErrorResponse(exc.message, exc.to_dict(), exc.status_code, headers)


async def _spectral_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpectralError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"location": [str(part) for part in err.get("loc", ())], "message": err.get("msg", "")}
        for err in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(p['location'])}: {p['message']}" for p in problems)
    message = f"Invalid request: {summary}"
    body = _body("invalid_request", message, {"errors": problems})
    return ErrorResponse(message, body, 422, {})


def _allowed_methods(request: Request) -> str:
    """Every method of every route at this path: the router's own 405 names only the first
    route it matched (e.g. ``POST`` for ``/models``, which also answers ``GET``)."""
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.routes):
        # Undocumented routes (the TF Serving verbs this server refuses) add no method.
        route = context.original_route
        if isinstance(route, APIRoute) and route.include_in_schema:
            match, _ = context.matches(request.scope)
            if match != Match.NONE:
                methods |= set(context.methods or ())
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        headers["Allow"] = allowed
    return ErrorResponse(str(exc.detail), _body(code, str(exc.detail)), exc.status_code, headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    message = "Internal server error; the server log has the details."
    return ErrorResponse(message, _body("internal_error", message), 500, {})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SpectralError, _spectral_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
