"""Blob stores, local directory and S3 (a real moto server process): content addressing,
idempotent atomic writes, checksum verification, and errors a client can act on."""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.artifacts import (
    PROBE_READ_TIMEOUT_S,
    ArtifactStoreUnavailable,
    BlobStore,
    LocalStore,
    S3Store,
    new_s3_client,
    store_for,
)
from service.datasets import dataset_store
from service.db import upgrade_database
from service.errors import ArtifactCorrupted
from service.registry import Registry
from service.settings import Settings
from tests.support.api import find_free_port
from tests.support.digits import digits_npz
from tests.support.s3 import S3Server, overwrite_blob

# Runs a second time in CI with the artifacts in S3 (scripts/test).
pytestmark = pytest.mark.artifact_store


@dataclass
class StoreCase:
    store: BlobStore
    # Overwrites the stored bytes of a sha behind the store's back (disk rot, a stray writer).
    overwrite: Callable[[str, bytes], None]
    # Every object or file the backend holds, temp files included.
    raw_names: Callable[[], list[str]]


@pytest.fixture(params=["local", "s3"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> StoreCase:
    if request.param == "local":
        local = LocalStore(tmp_path / "blobs")
        return StoreCase(
            local,
            lambda sha, data: overwrite_blob(local, sha, data),
            lambda: sorted(str(p) for p in tmp_path.rglob("*") if p.is_file()),
        )
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    client = server.client()
    s3 = S3Store(bucket, "pre/fix/artifacts", client=client)
    return StoreCase(
        s3,
        lambda sha, data: overwrite_blob(s3, sha, data),
        lambda: server.keys(bucket),
    )


def test_put_is_content_addressed_and_idempotent(case: StoreCase) -> None:
    store = case.store
    data = b"some model bytes" * 100
    sha, size = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert size == len(data)
    assert store.put(data) == (sha, size)
    assert store.exists(sha) and not store.exists("0" * 64)
    assert store.read(sha) == data
    other, _ = store.put(b"")  # empty blobs are blobs too
    assert store.read(other) == b""
    assert sorted(store.shas()) == sorted([sha, other])
    names = case.raw_names()
    assert len(names) == 2  # exactly the two blobs: no temp files, no duplicates
    assert any(name.endswith(f"{sha[:2]}/{sha}") for name in names)
    store.delete(sha)
    store.delete(sha)  # deleting a missing blob is not an error
    assert list(store.shas()) == [other]


def test_read_detects_corruption_and_missing_blobs(case: StoreCase) -> None:
    store = case.store
    sha, _ = store.put(b"original")
    case.overwrite(sha, b"tampered")
    with pytest.raises(ArtifactCorrupted, match="checksum") as caught:
        store.read(sha)
    assert caught.value.status_code == 500
    case.overwrite(sha, b"original"[:-1])  # truncated: a partial write must never be served
    with pytest.raises(ArtifactCorrupted, match="checksum"):
        store.read(sha)
    store.delete(sha)
    with pytest.raises(ArtifactCorrupted, match="missing"):
        store.read(sha)


def test_put_repairs_a_truncated_blob(case: StoreCase) -> None:
    # A blob of the wrong size under the right name is re-published, not trusted.
    data = b"0123456789" * 50
    sha = hashlib.sha256(data).hexdigest()
    case.overwrite(sha, data[:100])
    with pytest.raises(ArtifactCorrupted):
        case.store.read(sha)
    assert case.store.put(data) == (sha, len(data))
    assert case.store.read(sha) == data


def test_s3_put_skips_an_existing_object_and_sends_its_checksum(s3_server: S3Server) -> None:
    client = s3_server.client()
    bucket = s3_server.new_bucket()
    sent: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.s3.PutObject", lambda params, **_: sent.append(dict(params))
    )
    store = S3Store(bucket, "a", client=client)
    data = b"x" * 1000
    sha, _ = store.put(data)
    store.put(data)
    store.put(data)
    assert len(sent) == 1  # re-puts of stored content are a HEAD, not an upload
    assert sent[0]["Key"] == f"a/{sha[:2]}/{sha}"
    assert sent[0]["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_failed_local_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A full disk cannot be caused for real here, so the rename is made to fail.
    store = LocalStore(tmp_path)

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("service.artifacts.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"data")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_unreachable_s3_store_is_unavailable_not_an_internal_error(
    s3_server: S3Server,
) -> None:
    closed = S3Store("bucket", "p", client=new_s3_client(f"http://127.0.0.1:{find_free_port()}"))
    missing_bucket = S3Store("no-such-bucket-here", "p", client=s3_server.client())
    for store in (closed, missing_bucket):
        for call, argument in [(store.put, b"data"), (store.read, "ab" * 32)]:
            with pytest.raises(ArtifactStoreUnavailable) as caught:
                call(argument)  # type: ignore[operator]
            assert caught.value.status_code == 503
            assert caught.value.code == "artifact_store_unavailable"
            assert "s3://" in caught.value.message and "secret" not in caught.value.message
        with pytest.raises(ArtifactStoreUnavailable):
            list(store.shas())


def test_check_passes_on_a_usable_store_and_leaves_nothing(case: StoreCase) -> None:
    case.store.check()
    case.store.check()
    assert case.raw_names() == []


def test_check_fails_on_a_local_directory_that_cannot_be_written(tmp_path: Path) -> None:
    fresh = LocalStore(tmp_path / "not" / "yet")
    fresh.check()  # created, as the first write would
    assert fresh.root.is_dir()
    (tmp_path / "file").write_text("a file, not a directory")
    for root in (tmp_path / "file", tmp_path / "file" / "artifacts"):
        with pytest.raises(ArtifactStoreUnavailable) as caught:
            LocalStore(root).check()
        assert caught.value.code == "artifact_store_unavailable"
        assert str(root) in caught.value.message


def test_s3_check_fails_fast_without_retries(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing_bucket = S3Store("no-such-bucket-here", "p", client=s3_server.client())
    with pytest.raises(ArtifactStoreUnavailable, match="no-such-bucket-here"):
        missing_bucket.check()
    # The default client of a store built from the environment, as in the API: nothing
    # listens on the endpoint. Three attempts with backoff would take seconds; one is instant.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{find_free_port()}")
    closed = S3Store("bucket", "p")
    started = time.monotonic()
    with pytest.raises(ArtifactStoreUnavailable, match="EndpointConnectionError"):
        closed.check()
    assert time.monotonic() - started < 1.0
    # An endpoint that accepts the connection and never answers (the kernel's backlog): only
    # the probe's read timeout ends the wait, not the 60 s of the data path, nor its retries.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{hung.getsockname()[1]}")
        started = time.monotonic()
        with pytest.raises(ArtifactStoreUnavailable, match="ReadTimeoutError"):
            S3Store("bucket", "p").check()
        assert time.monotonic() - started < PROBE_READ_TIMEOUT_S + 1.5


def test_store_for_selects_by_artifact_url(tmp_path: Path) -> None:
    unset = Settings(data_dir=tmp_path, artifact_url=None)  # None even if the shell sets it
    default = store_for(unset, "artifacts")
    assert isinstance(default, LocalStore) and default.root == tmp_path / "artifacts"
    assert dataset_store(unset).root == tmp_path / "datasets"  # type: ignore[attr-defined]
    elsewhere = store_for(Settings(data_dir=tmp_path, artifact_url=str(tmp_path / "x")), "datasets")
    assert isinstance(elsewhere, LocalStore) and elsewhere.root == tmp_path / "x" / "datasets"
    s3 = store_for(Settings(data_dir=tmp_path, artifact_url="s3://bkt/team/a/"), "artifacts")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.key("ab" * 32)) == (
        "bkt",
        f"team/a/artifacts/ab/{'ab' * 32}",
    )
    bare = store_for(Settings(data_dir=tmp_path, artifact_url="s3://bkt"), "datasets")
    assert isinstance(bare, S3Store) and bare.key("cd" * 32) == f"datasets/cd/{'cd' * 32}"
    for url, message in [("gs://bkt/p", "scheme 'gs'"), ("s3:///p", "no bucket")]:
        with pytest.raises(ValueError, match=message):
            store_for(Settings(data_dir=tmp_path, artifact_url=url), "artifacts")
    with pytest.raises(ValueError, match="kind"):
        store_for(unset, "models")  # type: ignore[arg-type]


def test_registry_and_datasets_on_s3_leave_nothing_in_the_data_dir(
    s3_server: S3Server,
    s3_env: dict[str, str],
    tmp_path: Path,
    model_bytes: bytes,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    settings = Settings(data_dir=tmp_path, artifact_url=s3_env["SPECTRAL_ARTIFACT_URL"])
    upgrade_database(settings)
    # The sandboxed first load is the upload tests' business; here only the store matters.
    registry = Registry.from_settings(settings)
    registry.inspect = lambda _data: {"compile_config": None}
    record = registry.create_model("digits", model_bytes)
    assert registry.read_artifact(record) == model_bytes
    model = registry.load_keras_model(record)
    assert model.predict_on_batch(digits_data[0][:2]).shape == (2, 10)
    png = b"\x89PNG\r\n\x1a\n not really a png"
    second = registry.add_version("digits", model_bytes, report_png=png)
    assert registry.read_report_png(second) == png
    with pytest.raises(TypeError, match="local store"):
        registry.artifact_path(record)
    datasets = dataset_store(settings)
    npz = digits_npz(n=16)
    dataset_sha, _ = datasets.put(npz)
    assert datasets.read(dataset_sha) == npz

    bucket = s3_env["SPECTRAL_ARTIFACT_URL"].split("/")[2]
    keys = s3_server.keys(bucket)
    png_sha = hashlib.sha256(png).hexdigest()
    assert keys == sorted(
        [
            f"spectral/artifacts/{record.sha256[:2]}/{record.sha256}",
            f"spectral/artifacts/{png_sha[:2]}/{png_sha}",
            f"spectral/datasets/{dataset_sha[:2]}/{dataset_sha}",
        ]
    )
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "datasets").exists()
    registry.database.dispose()
