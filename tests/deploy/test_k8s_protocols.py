"""deploy/k8s exposes the serving protocols: the Ingress sends /v2 and /v1 to the API Service's
named port, and those prefixes are the ones the app's protocol routers serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.api.routes import tfserving, v2

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _docs() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def test_ingress_routes_the_protocols_to_the_api_service() -> None:
    ingress = _one("Ingress", "spectral-api")
    service = _one("Service", "spectral-api")
    port_names = {port["name"] for port in service["spec"]["ports"]}
    paths = {}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "spectral-api"
            assert backend["port"]["name"] in port_names
            assert path["pathType"] == "Prefix"
            paths[path["path"]] = backend
    assert {"/v2", "/v1", "/"} <= set(paths)
    assert v2.router.prefix == "/v2"
    assert tfserving.router.prefix.startswith("/v1/")
    assert all(port.get("appProtocol") == "http" for port in service["spec"]["ports"])
