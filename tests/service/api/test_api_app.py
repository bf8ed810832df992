"""The app factory: the one JSON error shape for unexpected errors, and readiness checks."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings


def test_unexpected_errors_are_500_in_the_error_shape(tmp_path: Path) -> None:
    # A bug cannot be caused on purpose through the real routes, so this one route raises.
    app = create_app(Settings(data_dir=tmp_path))

    def broken() -> None:
        raise RuntimeError("secret connection string")

    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/broken")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    assert "secret" not in error["message"]


def test_readyz_checks_the_broker(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path / "ok"))) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["broker"] == "ok"

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    settings = Settings(data_dir=tmp_path / "dead", broker_url=dead)
    with TestClient(create_app(settings)) as client:
        started = time.monotonic()
        down = client.get("/readyz")
    assert down.status_code == 503 and down.json()["checks"]["broker"].startswith("failed")
    assert down.json()["checks"]["database"] == "ok"
    assert time.monotonic() - started < 10
