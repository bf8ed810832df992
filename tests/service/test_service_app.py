"""The app factory's error handling: every failure answers in the one JSON error shape."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
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
