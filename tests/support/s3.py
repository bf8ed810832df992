"""A real S3-compatible server for tests: moto's server mode in a subprocess on 127.0.0.1.

`s3_server` (session) starts one process; `s3_env` (per test) creates a bucket of its own and
returns the environment that points a process at it (``SPECTRAL_ARTIFACT_URL`` plus the
standard AWS variables). Import both fixtures into the test module that needs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.artifacts import BlobStore, LocalStore, S3Store, new_s3_client, store_for
from service.settings import Settings
from tests.support.api import RunningApi, find_free_port

S3_START_TIMEOUT_S = 30.0
# moto accepts any credentials; these only have to exist so boto3 signs its requests.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "spectral-test",
    "AWS_SECRET_ACCESS_KEY": "spectral-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> Any:
        return new_s3_client(self.endpoint)

    def new_bucket(self) -> str:
        bucket = f"spectral-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def overwrite_blob(store: BlobStore, sha256: str, data: bytes) -> None:
    """Writes ``data`` under ``sha256`` behind the store's back (disk rot, a stray writer), on
    either store: how a test damages an artifact without knowing where it lives."""
    if isinstance(store, LocalStore):
        path = store.path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    elif isinstance(store, S3Store):
        store.client.put_object(Bucket=store.bucket, Key=store.key(sha256), Body=data)
    else:
        raise TypeError(f"overwrite_blob expected a LocalStore or an S3Store. Received: {store!r}")


def stored_artifacts(api: RunningApi) -> list[str]:
    """The sha256 of every artifact (models, report images) a running API has stored, on
    whichever store its environment selects."""
    url = api.env.get("SPECTRAL_ARTIFACT_URL")
    return sorted(store_for(Settings(data_dir=api.data_dir, artifact_url=url), "artifacts").shas())


def start_s3_server(log_path: Path) -> S3Server:
    port = find_free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + S3_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            return S3Server(endpoint, process, log_path)
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"moto server did not answer within {S3_START_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    saved = {name: os.environ.get(name) for name in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)  # for clients built in this process
    server = start_s3_server(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh bucket; the environment selecting it, also applied to this process."""
    bucket = s3_server.new_bucket()
    env = {
        **AWS_TEST_ENV,
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "SPECTRAL_ARTIFACT_URL": f"s3://{bucket}/spectral",
    }
    for name, value in env.items():
        if not name.startswith("SPECTRAL_"):
            monkeypatch.setenv(name, value)
    return env


# -- the whole suite on S3 -------------------------------------------------------------------
# `pytest --artifact-store=s3` (the option is registered in tests/conftest.py) runs every test
# with SPECTRAL_ARTIFACT_URL pointing at a prefix of its own in one bucket of the session's moto
# server. Settings built in the test process read it from the environment; servers and workers
# started through tests/conftest.py's factories get it in their environment.


def add_store_option(parser: pytest.Parser) -> None:
    parser.addoption(
        "--artifact-store",
        choices=["local", "s3"],
        default="local",
        help="Where tests store artifacts: local directories (default), or a moto S3 server "
        "on 127.0.0.1 (tests marked artifact_store must pass on both).",
    )


def suite_store_is_s3(config: pytest.Config) -> bool:
    return bool(config.getoption("--artifact-store") == "s3")


@pytest.fixture(scope="session")
def _suite_bucket(request: pytest.FixtureRequest) -> tuple[str, str] | None:
    if not suite_store_is_s3(request.config):
        return None
    server: S3Server = request.getfixturevalue("s3_server")
    return server.endpoint, server.new_bucket()


@pytest.fixture
def suite_store_env(_suite_bucket: tuple[str, str] | None) -> dict[str, str]:
    """The environment that selects this test's store: empty on the local store, else the AWS
    variables and an ``s3://`` URL with a prefix of this test's own."""
    return _store_env(_suite_bucket)


def _store_env(_suite_bucket: tuple[str, str] | None) -> dict[str, str]:
    if _suite_bucket is None:
        return {}
    endpoint, bucket = _suite_bucket
    return {
        **AWS_TEST_ENV,
        "AWS_ENDPOINT_URL": endpoint,
        "SPECTRAL_ARTIFACT_URL": f"s3://{bucket}/{uuid.uuid4().hex[:12]}",
    }


@pytest.fixture(scope="module")
def module_store_env(_suite_bucket: tuple[str, str] | None) -> dict[str, str]:
    """`suite_store_env` for a server shared by a module's tests (a prefix of the module's own)."""
    return _store_env(_suite_bucket)


@pytest.fixture(autouse=True)
def _artifacts_in_suite_bucket(
    suite_store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in suite_store_env.items():
        monkeypatch.setenv(name, value)
