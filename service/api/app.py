"""The FastAPI app factory: settings, database, registry, model cache, metrics, routers, errors."""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import Database, upgrade_database
from service.errors import PayloadTooLarge, SpectralError
from service.inference import ModelCache, Predictor
from service.metrics import ServiceMetrics
from service.registry import Registry
from service.routes import aliases, models, ops, predict
from service.settings import Settings, get_settings
from worker.celery_app import broker_check, create_celery

logger = logging.getLogger(__name__)

_MODEL_UPLOAD_PATH = re.compile(r"^/models(/[^/]+/versions)?/?$")
_DATASET_UPLOAD_PATH = re.compile(r"^/datasets/?$")
_PREDICT_PATH = re.compile(r"^/models/[^/]+(/versions/[^/]+)?/predict/?$")
# Room for the multipart boundaries and the form's other fields around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024

ReadinessCheck = Callable[[], Any]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: PayloadTooLarge.code}


class BodySizeLimit:
    """Refuses request bodies (model and dataset uploads, predict JSON) over their limit with
    413 while the body streams in.

    A declared Content-Length over the limit is refused before reading anything; otherwise the
    bytes are counted as they arrive, so a chunked upload is cut off as soon as it passes the
    limit rather than being spooled whole.
    """

    def __init__(self, app: ASGIApp, limits: list[tuple[re.Pattern[str], int]]) -> None:
        self.app = app
        self.limits = limits

    def _file_limit(self, scope: Scope) -> int | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        return next((limit for path, limit in self.limits if path.match(scope["path"])), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        file_limit = self._file_limit(scope)
        if file_limit is None:
            await self.app(scope, receive, send)
            return
        limit = file_limit + _MULTIPART_OVERHEAD
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, file_limit)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPExceptions from body parsing as they are (anything
                    # else becomes a generic 400); the error handler renders it as 413.
                    raise StarletteHTTPException(413, detail=self._error(file_limit).message)
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    def _error(file_limit: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"Request body exceeds the limit of {file_limit / (1024 * 1024):.3g} MiB",
            details={"limit_bytes": file_limit},
        )

    async def _refuse(self, send: Send, file_limit: int) -> None:
        response = JSONResponse(self._error(file_limit).to_dict(), status_code=413)
        await response(  # type: ignore[arg-type]
            {"type": "http", "headers": []}, _no_body, send
        )


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _error_response(error: SpectralError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else None
    return JSONResponse(error.to_dict(), status_code=error.status_code, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def spectral_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SpectralError)
        return _error_response(exc)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            {
                "location": [str(part) for part in err.get("loc", ())],
                "message": err.get("msg", ""),
            }
            for err in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(p['location'])}: {p['message']}" for p in problems)
        body = {
            "error": {
                "code": "invalid_request",
                "message": f"Invalid request: {summary}",
                "details": {"errors": problems},
            }
        }
        return JSONResponse(body, status_code=422)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail), "details": None}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {
            "error": {
                "code": "internal_error",
                "message": "Internal server error; the server log has the details.",
                "details": None,
            }
        }
        return JSONResponse(body, status_code=500)

    app.add_exception_handler(SpectralError, spectral_error)
    app.add_exception_handler(Exception, unexpected_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


class HttpMetrics:
    """Counts requests and their latency by route template (pure ASGI, no task group)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            # The router records the matched route in the (shared) scope.
            template = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.http_requests.labels(method, template, str(status)).inc()
            self.metrics.http_latency.labels(method, template).observe(time.perf_counter() - start)


def _optional_routers() -> list[Any]:
    """Routers owned by the jobs/datasets side, included when their modules exist."""
    routers = []
    for name in ("service.routes.datasets", "service.routes.jobs"):
        if importlib.util.find_spec(name) is not None:
            routers.append(importlib.import_module(name).router)
    return routers


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the API for ``settings`` (default: from the environment), migrating the database."""
    settings = settings or get_settings()
    upgrade_database(settings)
    database = Database(settings)
    registry = Registry.from_settings(settings, database)
    metrics = ServiceMetrics()

    app = FastAPI(
        title="Spectral model service",
        version="0.1.0",
        description="Registry of spectral Keras models with versions, aliases, lineage and "
        "a versioned predict API.",
    )
    app.state.settings = settings
    app.state.database = database
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.model_cache = ModelCache(registry.load_keras_model, settings.model_cache_size)
    app.state.predictor = Predictor(app.state.model_cache, settings.max_batch, metrics)
    app.state.readiness_checks = [("database", database.ping)]
    app.state.celery = create_celery(settings)  # sends job messages; see routes/jobs.py
    app.state.readiness_checks.append(("broker", broker_check(app.state.celery)))

    _install_error_handlers(app)
    app.add_middleware(HttpMetrics, metrics=metrics)
    app.add_middleware(
        BodySizeLimit,
        limits=[
            (_MODEL_UPLOAD_PATH, settings.max_upload_bytes),
            (_DATASET_UPLOAD_PATH, settings.max_dataset_bytes),
            (_PREDICT_PATH, settings.max_request_bytes),
        ],
    )
    for router in (ops.router, models.router, aliases.router, predict.router):
        app.include_router(router)
    for router in _optional_routers():
        app.include_router(router)
    return app
