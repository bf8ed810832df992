"""The exception handlers: every failure answers ``{"error": {"code", "message", "details"}}``.

The error classes themselves live in `service.errors`; this module only renders them.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.errors import PayloadTooLarge, RateLimited, SpectralError

logger = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: PayloadTooLarge.code}


def _body(code: str, message: str, details: object = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(exc: SpectralError) -> JSONResponse:
    """The response for ``exc``, with the headers its status calls for (401, 429)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers or None)


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
    body = _body("invalid_request", f"Invalid request: {summary}", {"errors": problems})
    return JSONResponse(body, status_code=422)


def _allowed_methods(request: Request) -> str:
    """Every method of every route at this path: the router's own 405 names only the first
    route it matched (e.g. ``POST`` for ``/models``, which also answers ``GET``)."""
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.routes):
        if isinstance(context.original_route, APIRoute):
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
    return JSONResponse(
        _body(code, str(exc.detail)), status_code=exc.status_code, headers=headers or None
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    body = _body("internal_error", "Internal server error; the server log has the details.")
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SpectralError, _spectral_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
