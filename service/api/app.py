"""The FastAPI app factory: settings, database, registry, model cache, broker, routers, errors."""

from __future__ import annotations

import time

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.broker import JobBroker
from service.api.deps import RateLimiters
from service.api.errors import install_error_handlers
from service.api.guard import RequestGuard
from service.api.openapi import install_openapi
from service.api.routes import aliases, datasets, jobs, models, ops, predict, tfserving, v2
from service.api.routes.docs import install_docs
from service.api.ui import install_ui
from service.db import Database, upgrade_database
from service.inference import ModelCache, Predictor
from service.metrics import ServiceMetrics
from service.registry import Registry
from service.serving import PredictCore
from service.serving.core import ServingRegistry
from service.settings import Settings
from service.tokens import TokenTable


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


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the API for ``settings``, migrating the database.

    Without settings (``uvicorn --factory``), they are read from the environment for this app
    alone; the process-wide `get_settings` cache is left untouched.
    """
    settings = settings or Settings()
    # Read first: a broken token file stops the start-up, before anything is served.
    tokens = TokenTable.load(settings.tokens_file)
    upgrade_database(settings)
    database = Database(settings)
    # Tells the predict core of this process's own writes, so it never serves them stale.
    registry: Registry = ServingRegistry.from_settings(settings, database)
    metrics = ServiceMetrics()
    broker = JobBroker(settings)

    app = FastAPI(
        title="Spectral model service",
        version="0.1.0",
        description="Registry of spectral Keras models with versions, aliases, lineage and "
        "a versioned predict API.",
        # Served by install_docs from packaged assets, not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.broker = broker
    app.state.tokens = tokens
    app.state.rate_limiters = RateLimiters.from_settings(settings)
    app.state.model_cache = ModelCache(registry.load_keras_model, settings.model_cache_size)
    app.state.predictor = Predictor(app.state.model_cache, settings.max_batch, metrics)
    app.state.predict_core = PredictCore(
        registry,
        app.state.predictor,
        max_rows=settings.batch_max_rows,
        max_delay_ms=settings.batch_max_delay_ms,
        refresh_s=settings.serving_refresh_s,
        capacity=settings.model_cache_size,
    )
    app.state.readiness_checks = [
        ("database", database.ping),
        ("broker", broker.check),
        ("artifact_store", registry.store.check),
    ]

    install_error_handlers(app)
    # HttpMetrics, added last, is outermost: it counts the guard's refusals too.
    app.add_middleware(RequestGuard)
    app.add_middleware(HttpMetrics, metrics=metrics)
    for module in (ops, models, aliases, predict, v2, tfserving, datasets, jobs):
        app.include_router(module.router)
    install_docs(app)
    install_openapi(app)
    install_ui(app)
    return app
