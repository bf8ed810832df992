"""The Kubernetes manifests give a worker the time its graceful shutdown takes, and probe the API
on routes that exist: liveness on one that needs nothing else, readiness on one that does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.api.routes.ops import router as ops_router
from service.settings import Settings
from worker.shutdown import RELEASE_GRACE_S

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = [
    doc
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc and doc.get("kind") == "Deployment"
]
# Celery's own exit after its pool drained, and the writes of a release.
EXIT_MARGIN_S = 10.0


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def _is_worker(deployment: dict[str, Any]) -> bool:
    return any(c.get("args", [None])[0] == "worker" for c in _containers(deployment))


def _env(container: dict[str, Any], name: str) -> str | None:
    return next((e["value"] for e in container.get("env", []) if e["name"] == name), None)


WORKERS = [d for d in DEPLOYMENTS if _is_worker(d)]
APIS = [d for d in DEPLOYMENTS if any(c.get("args") == ["api"] for c in _containers(d))]


def test_the_manifests_have_workers_and_an_api() -> None:
    assert len(WORKERS) >= 2 and len(APIS) == 1  # CPU and GPU workers


@pytest.mark.parametrize("deployment", WORKERS, ids=lambda d: d["metadata"]["name"])
def test_worker_grace_period_covers_the_shutdown_window(deployment: dict[str, Any]) -> None:
    (container,) = _containers(deployment)
    configured = _env(container, "SPECTRAL_JOB_SHUTDOWN_S")
    window = (
        Settings(job_shutdown_s=float(configured))  # type: ignore[call-arg]
        if configured is not None
        else Settings()
    ).job_shutdown_s
    assert window >= Settings.model_fields["job_shutdown_s"].default
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= window + RELEASE_GRACE_S + EXIT_MARGIN_S
    # Not so long that a rolling update waits minutes on a worker that has nothing left to do.
    assert grace <= window + RELEASE_GRACE_S + 60


@pytest.mark.parametrize("deployment", WORKERS, ids=lambda d: d["metadata"]["name"])
def test_worker_has_no_probe_through_the_broker(deployment: dict[str, Any]) -> None:
    (container,) = _containers(deployment)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        command = " ".join(container.get(probe, {}).get("exec", {}).get("command", []))
        assert "inspect" not in command, f"{probe} goes through the broker: {command}"


def test_api_probes_use_existing_routes_for_their_purpose() -> None:
    (api,) = APIS
    (container,) = _containers(api)
    routes = {route.path for route in ops_router.routes}  # type: ignore[attr-defined]
    readiness = container["readinessProbe"]["httpGet"]["path"]
    liveness = container["livenessProbe"]["httpGet"]["path"]
    assert {readiness, liveness} <= routes
    # Liveness must not depend on the database or broker: an outage would restart every API.
    assert liveness == "/healthz" and readiness == "/readyz"
