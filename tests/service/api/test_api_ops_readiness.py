"""/readyz checks the artifact store, against real faults on a real server: an S3 server that
stops or never answers, a bucket that goes away, a directory that cannot be written. /healthz
stays 200 throughout: the process is alive, only not ready."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.api import RunningApi
from tests.support.s3 import AWS_TEST_ENV, start_s3_server

# A probe must answer well inside an orchestrator's probe timeout, whatever the store does;
# boto3's default retries and timeouts would take a minute or more.
PROBE_BUDGET_S = 6.0


def _ready(api: RunningApi) -> tuple[int, dict[str, str], float]:
    started = time.monotonic()
    response = httpx.get(f"{api}/readyz", timeout=60)
    elapsed = time.monotonic() - started
    assert httpx.get(f"{api}/healthz", timeout=10).status_code == 200
    return response.status_code, response.json()["checks"], elapsed


def _assert_store_not_ready(api: RunningApi) -> None:
    status, checks, elapsed = _ready(api)
    assert status == 503, checks
    assert checks["artifact_store"] == "failed (ArtifactStoreUnavailable)", checks
    assert checks["database"] == "ok" and checks["broker"] == "ok", checks
    assert elapsed < PROBE_BUDGET_S, f"/readyz took {elapsed:.1f} s"


def test_readyz_fails_fast_when_s3_goes_away(
    start_api: Callable[..., RunningApi], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in AWS_TEST_ENV.items():  # for this process's client
        monkeypatch.setenv(name, value)
    server = start_s3_server(tmp_path / "moto.log")  # its own: this test stops it
    try:
        bucket = server.new_bucket()
        api = start_api(
            {
                **AWS_TEST_ENV,
                "AWS_ENDPOINT_URL": server.endpoint,
                "SPECTRAL_ARTIFACT_URL": f"s3://{bucket}/spectral",
            }
        )
        status, checks, _ = _ready(api)
        assert status == 200 and checks["artifact_store"] == "ok", checks

        server.client().delete_bucket(Bucket=bucket)
        _assert_store_not_ready(api)

        server.new_bucket()  # another bucket: this one is still missing
        _assert_store_not_ready(api)
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)
    _assert_store_not_ready(api)  # nothing listens on the endpoint any more


def test_readyz_fails_fast_when_s3_never_answers(
    start_api: Callable[..., RunningApi], tmp_path: Path
) -> None:
    # A listening socket that accepts connections (the kernel's backlog) and never answers:
    # a hung S3 endpoint, which only the read timeout catches.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        api = start_api(
            {
                **AWS_TEST_ENV,
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{hung.getsockname()[1]}",
                "SPECTRAL_ARTIFACT_URL": "s3://hung/spectral",
            }
        )
        _assert_store_not_ready(api)
        _assert_store_not_ready(api)  # and again: no probe waits on the one before


def test_readyz_on_a_local_store_needs_a_writable_directory(
    start_api: Callable[..., RunningApi], tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh"  # not created yet: the first write would create it
    api = start_api({"SPECTRAL_ARTIFACT_URL": str(fresh)})
    status, checks, _ = _ready(api)
    assert status == 200 and checks["artifact_store"] == "ok", checks
    assert (fresh / "artifacts").is_dir() and list((fresh / "artifacts").iterdir()) == []

    # The store's directory disappears and a file takes its place (a volume not mounted).
    shutil.rmtree(fresh)
    fresh.write_text("not a directory")
    _assert_store_not_ready(api)
    fresh.unlink()
    status, checks, _ = _ready(api)
    assert status == 200 and checks["artifact_store"] == "ok", checks


def test_readyz_on_a_read_only_local_store(
    start_api: Callable[..., RunningApi], tmp_path: Path
) -> None:
    root = tmp_path / "store"
    (root / "artifacts").mkdir(parents=True)
    api = start_api({"SPECTRAL_ARTIFACT_URL": str(root)})
    assert _ready(api)[0] == 200
    with _read_only(root / "artifacts"):
        _assert_store_not_ready(api)
        assert list((root / "artifacts").iterdir()) == []  # the probe left nothing behind
    assert _ready(api)[0] == 200


@contextmanager
def _read_only(directory: Path) -> Iterator[None]:
    """Makes ``directory`` refuse new files, for root too (which ignores permission bits): the
    immutable attribute, where the file system has it."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root without chattr: no way to make a directory read-only")
    if subprocess.run([chattr, "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip(f"running as root and {directory} cannot be made immutable here")
    try:
        probe = directory / f"probe-{uuid.uuid4().hex}"
        with pytest.raises(PermissionError):
            probe.write_bytes(b"")  # the fault is real
        yield
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)
