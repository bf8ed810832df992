"""Content-addressed artifact storage: files named by the sha256 of their bytes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from service.errors import ArtifactCorrupted


class ArtifactStore:
    """Stores byte blobs under ``root/<sha[:2]>/<sha>``, written atomically, verified on read.

    Args:
        root: Directory of the store; created on first write.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, data: bytes) -> tuple[str, int]:
        """Stores ``data`` (no-op if already present). Returns ``(sha256, size)``."""
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.path(sha256)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Write to a temp file in the same directory, then rename: readers never see a
            # half-written artifact, and a crash leaves only a stray temp file.
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return sha256, len(data)

    def read(self, sha256: str) -> bytes:
        """The stored bytes; raises `ArtifactCorrupted` if they no longer hash to ``sha256``."""
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactCorrupted(f"Artifact {sha256} is missing from the store") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtifactCorrupted(f"Artifact {sha256} failed its checksum (got {actual})")
        return data

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def files(self) -> list[Path]:
        """Every stored artifact file (temp files excluded)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith("."))
