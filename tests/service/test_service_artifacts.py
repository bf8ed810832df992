"""ArtifactStore: content addressing, idempotent atomic writes, checksum verification."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.artifacts import ArtifactStore
from service.errors import ArtifactCorrupted


def test_put_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = b"some model bytes" * 100
    sha, size = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert size == len(data)
    assert store.put(data) == (sha, size)
    assert store.files() == [store.path(sha)]
    assert store.read(sha) == data
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_read_detects_corruption_and_missing_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    sha, _ = store.put(b"original")
    store.path(sha).write_bytes(b"tampered")
    with pytest.raises(ArtifactCorrupted, match="checksum"):
        store.read(sha)
    store.delete(sha)
    with pytest.raises(ArtifactCorrupted, match="missing"):
        store.read(sha)


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A full disk cannot be caused for real here, so the rename is made to fail.
    store = ArtifactStore(tmp_path)

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("service.artifacts.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"data")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
