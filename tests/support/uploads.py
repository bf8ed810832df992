"""Builders of bad uploads and request helpers shared by the service tests."""

from __future__ import annotations

from pathlib import Path

import httpx


def lambda_model_bytes(tmp_dir: Path) -> bytes:
    """A real .keras file whose model contains a Lambda layer (arbitrary code)."""
    import keras

    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Lambda(lambda x: x * 2.0), keras.layers.Dense(10)]
    )
    path = tmp_dir / "lambda.keras"
    model.save(path)
    return path.read_bytes()


def upload(
    client: httpx.Client, name: str, data: bytes, filename: str = "model.keras"
) -> httpx.Response:
    return client.post(
        "/models", data={"name": name}, files={"file": (filename, data, "application/zip")}
    )


def upload_version(
    client: httpx.Client, model_id: str, data: bytes, filename: str = "model.keras"
) -> httpx.Response:
    return client.post(
        f"/models/{model_id}/versions", files={"file": (filename, data, "application/zip")}
    )


def artifact_files(data_dir: Path) -> list[Path]:
    root = data_dir / "artifacts"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
