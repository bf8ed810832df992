"""Prometheus metrics of one app: HTTP requests, and predictions per model and version.

Each app gets its own `CollectorRegistry`, so several apps in one process (tests) don't clash.
With several uvicorn workers each process reports its own counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "spectral_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "spectral_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "spectral_predict_requests_total",
            "Predict requests by model, version and outcome (ok or an error code).",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.predict_latency = Histogram(
            "spectral_predict_duration_seconds",
            "Predict latency (validation + forward pass) by model and version.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
