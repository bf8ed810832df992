"""Upload size limit (declared and streamed) and bearer-token auth, against real servers."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import RunningApi
from tests.support.s3 import stored_artifacts
from tests.support.uploads import upload

TOKEN = "s3cret-token"


def _multipart_chunks(name: str, data: bytes, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="big.keras"\r\nContent-Type: application/zip\r\n\r\n'
    ).encode()
    for start in range(0, len(data), 8192):
        yield data[start : start + 8192]
    yield f"\r\n--{boundary}--\r\n".encode()


def _nothing_stored(api: RunningApi) -> None:
    assert stored_artifacts(api) == []
    with sqlite3.connect(api.data_dir / "registry.db") as conn:
        assert conn.execute("SELECT count(*) FROM models").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM model_versions").fetchone()[0] == 0


def test_oversize_predict_bodies_are_413(
    start_api: Callable[..., RunningApi], digits_model_path: Path
) -> None:
    api = start_api({"SPECTRAL_MAX_REQUEST_MB": "0.1"})
    with httpx.Client(base_url=api, timeout=60) as client:
        assert upload(client, "digits", digits_model_path.read_bytes()).status_code == 201
        small = client.post("/models/digits/predict", json={"inputs": [[0.0] * 64] * 4})
        assert small.status_code == 200, small.text
        # About 300 KiB of JSON, refused before it is parsed.
        big = client.post("/models/digits/versions/1/predict", json={"inputs": [[0.5] * 64] * 1000})
        assert big.status_code == 413, big.text
        assert big.json()["error"]["code"] == "payload_too_large"


@pytest.mark.artifact_store
def test_oversize_uploads_are_413_and_leave_nothing(
    start_api: Callable[..., RunningApi], digits_model_path: Path
) -> None:
    api = start_api({"SPECTRAL_MAX_UPLOAD_MB": "0.1"})
    big = os.urandom(300 * 1024)
    with httpx.Client(base_url=api, timeout=60) as client:
        declared = upload(client, "too-big", big)
        assert declared.status_code == 413, declared.text
        assert declared.json()["error"]["code"] == "payload_too_large"

        # No Content-Length: the server has to count the bytes as they stream in.
        boundary = "spectral-test-boundary"
        streamed = client.post(
            "/models",
            content=_multipart_chunks("too-big", big, boundary),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert streamed.status_code == 413, streamed.text
        assert "0.1 MiB" in streamed.json()["error"]["message"]
        _nothing_stored(api)

        # Under the limit, the same server accepts a real model.
        assert digits_model_path.stat().st_size < 0.1 * 1024 * 1024
        ok = upload(client, "small", digits_model_path.read_bytes())
        assert ok.status_code == 201, ok.text


@pytest.mark.parametrize("protect_reads", [False, True])
def test_bearer_token_guards_writes_and_optionally_reads(
    start_api: Callable[..., RunningApi], digits_model_path: Path, protect_reads: bool
) -> None:
    api = start_api(
        {"SPECTRAL_API_TOKEN": TOKEN, "SPECTRAL_PROTECT_READS": str(protect_reads).lower()}
    )
    data = digits_model_path.read_bytes()
    with (
        httpx.Client(base_url=api, timeout=60) as anon,
        httpx.Client(
            base_url=api, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as authed,
        httpx.Client(base_url=api, timeout=60, headers={"Authorization": "Bearer wrong"}) as wrong,
    ):
        for client in (anon, wrong):
            refused = upload(client, "guarded", data)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
        _nothing_stored(api)
        assert upload(authed, "guarded", data).status_code == 201
        alias = {"version": 1}
        assert anon.put("/models/guarded/aliases/production", json=alias).status_code == 401
        assert authed.put("/models/guarded/aliases/production", json=alias).status_code == 200

        predict = {"inputs": [[0.0] * 64]}
        read_status = 401 if protect_reads else 200
        assert anon.get("/models/guarded").status_code == read_status
        assert anon.post("/models/guarded/predict", json=predict).status_code == read_status
        assert wrong.get("/models").status_code == read_status
        assert authed.get("/models/guarded").status_code == 200
        assert authed.post("/models/guarded/predict", json=predict).status_code == 200
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/metrics").status_code == read_status
        assert authed.get("/metrics").status_code == 200


def test_open_server_needs_no_token(start_api: Callable[..., RunningApi]) -> None:
    api = start_api()
    with httpx.Client(base_url=api, timeout=60) as client:
        response = upload(client, "open", b"not a model")
        # Rejected for its content, not for missing credentials.
        assert response.status_code == 400
        assert client.get("/models").json() == {"data": [], "count": 0}


@pytest.mark.artifact_store
def test_api_on_postgresql(
    start_api: Callable[..., RunningApi], postgres_url: str, digits_model_path: Path
) -> None:
    api = start_api({"SPECTRAL_DATABASE_URL": postgres_url})
    with httpx.Client(base_url=api, timeout=60) as client:
        assert client.get("/readyz").json()["checks"]["database"] == "ok"
        created = upload(client, "on-postgres", digits_model_path.read_bytes())
        assert created.status_code == 201, created.text
        assert client.put("/models/on-postgres/aliases/production", json={"version": 1}).is_success
        predicted = client.post("/models/on-postgres/predict", json={"inputs": [[0.0] * 64]})
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["version"] == 1
        # Past PostgreSQL's INTEGER: refused by the schema, never an overflow in the database.
        for number in (2**31, 2**63):
            missing = client.get(f"/models/on-postgres/versions/{number}")
            assert missing.status_code == 422, missing.text
        assert client.get("/models/on-postgres/versions/2147483647").status_code == 404
        assert client.get("/jobs", params={"offset": 2**31 - 1}).json()["data"] == []
    # The registry lives in PostgreSQL: no SQLite file was created in the data dir.
    assert not (api.data_dir / "registry.db").exists()
    assert len(stored_artifacts(api)) == 1
