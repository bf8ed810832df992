"""Content-addressed blob storage: artifacts, report images and datasets, named by their sha256.

One interface, `BlobStore`, two implementations chosen by ``SPECTRAL_ARTIFACT_URL``:

- `LocalStore`: files under a directory (the default, ``<data_dir>/artifacts`` and
  ``<data_dir>/datasets``); a write goes to a temp file that is then renamed into place.
- `S3Store`: objects in an S3-compatible bucket (AWS S3, MinIO, ...), keyed
  ``<prefix>/<kind>/<sha[:2]>/<sha>``. A PUT publishes a whole object or nothing, and it carries
  the sha256 so the server refuses bytes damaged on the way.

Both hash on write and verify on read: a blob that no longer hashes to its name is never
returned (`ArtifactCorrupted`). A store that cannot be reached raises
`ArtifactStoreUnavailable` (503): the request may succeed later, and the client did nothing wrong.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from service.errors import ArtifactCorrupted, ArtifactStoreUnavailable
from service.settings import Settings

StoreKind = Literal["artifacts", "datasets"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


class BlobStore(ABC):
    """Byte blobs named by the sha256 of their content: written once, verified on every read."""

    def put(self, data: bytes) -> tuple[str, int]:
        """Stores ``data`` (a no-op when it is already stored). Returns ``(sha256, size)``."""
        sha256 = hashlib.sha256(data).hexdigest()
        self._publish(sha256, data)
        return sha256, len(data)

    def read(self, sha256: str) -> bytes:
        """The stored bytes.

        Raises:
            ArtifactCorrupted: the blob is missing, or no longer hashes to ``sha256``.
            ArtifactStoreUnavailable: the store cannot be reached.
        """
        data = self._fetch(sha256)
        if data is None:
            raise ArtifactCorrupted(f"Artifact {sha256} is missing from the store")
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtifactCorrupted(f"Artifact {sha256} failed its checksum (got {actual})")
        return data

    def check(self) -> None:
        """Raises `ArtifactStoreUnavailable` when the store cannot be reached (readiness)."""
        self.exists("0" * 64)

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Removes the blob; a missing one is not an error."""

    @abstractmethod
    def shas(self) -> Iterator[str]:
        """The sha256 of every stored blob (for orphan checks); partial uploads never appear."""

    @abstractmethod
    def _publish(self, sha256: str, data: bytes) -> None:
        """Makes ``data`` readable under ``sha256`` all at once, or not at all."""

    @abstractmethod
    def _fetch(self, sha256: str) -> bytes | None:
        """The raw bytes under ``sha256``, or None when there are none."""


class LocalStore(BlobStore):
    """Blobs as files ``root/<sha[:2]>/<sha>``.

    Args:
        root: Directory of the store; created on first write.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def check(self) -> None:
        """The directory exists (created here, as the first write would) and takes a file.

        A probe file, not `os.access`: root passes every permission check, and a read-only
        mount or a full disk only shows on a real write.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".ready-", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ArtifactStoreUnavailable(
                f"The artifact store {self.root} is not writable: {exc.strerror or exc}"
            ) from exc

    def _publish(self, sha256: str, data: bytes) -> None:
        target = self.path(sha256)
        # Same name and size is the same content (reads verify it); a short file, damage after
        # the fact, is replaced.
        if target.is_file() and target.stat().st_size == len(data):
            return
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

    def _fetch(self, sha256: str) -> bytes | None:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def files(self) -> list[Path]:
        """Every stored artifact file (temp files excluded)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith("."))

    def shas(self) -> Iterator[str]:
        return (p.name for p in self.files() if _SHA256.fullmatch(p.name))


# The name every caller used before the S3 store existed.
ArtifactStore = LocalStore


class S3Store(BlobStore):
    """Blobs as objects ``s3://<bucket>/<prefix>/<sha[:2]>/<sha>`` in an S3-compatible store.

    The endpoint, region and credentials come from the standard AWS configuration
    (``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, profiles, instance roles), read by boto3 itself.

    Args:
        bucket: Bucket name (it must exist).
        prefix: Key prefix of this store, without leading or trailing slash ("" for none).
        client: A boto3 S3 client; default: one per process, built from the AWS environment.
    """

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        if not bucket:
            raise ValueError("S3Store expected a bucket name. Received: an empty string")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    @property
    def client(self) -> Any:
        return self._client if self._client is not None else _default_s3_client()

    def check(self) -> None:
        """One HEAD of the bucket, with short timeouts and no retries: a readiness probe must
        answer within the orchestrator's timeout, and the next probe is the retry."""
        client = self._client if self._client is not None else _default_s3_client(probe=True)
        with _mapped_errors(self):
            client.head_bucket(Bucket=self.bucket)

    def key(self, sha256: str) -> str:
        name = f"{sha256[:2]}/{sha256}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _size(self, sha256: str) -> int | None:
        """The stored object's size, or None when there is no object."""
        with _mapped_errors(self):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
            except Exception as exc:
                if _is_missing(exc):
                    return None
                raise
        return int(head["ContentLength"])

    def exists(self, sha256: str) -> bool:
        return self._size(sha256) is not None

    def _publish(self, sha256: str, data: bytes) -> None:
        # Content addressing makes a same-size object under this key the same bytes (barring
        # damage, which reads catch), so it is not uploaded twice.
        if self._size(sha256) == len(data):
            return
        # One PUT is atomic: readers see the whole object or none. The checksum makes the
        # server refuse a body that does not hash to the name.
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode("ascii")
        with _mapped_errors(self):
            self.client.put_object(
                Bucket=self.bucket, Key=self.key(sha256), Body=data, ChecksumSHA256=checksum
            )

    def _fetch(self, sha256: str) -> bytes | None:
        with _mapped_errors(self):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))
            except Exception as exc:
                if _is_missing(exc):
                    return None
                raise
            body: bytes = response["Body"].read()
        return body

    def delete(self, sha256: str) -> None:
        with _mapped_errors(self):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))

    def shas(self) -> Iterator[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        with _mapped_errors(self):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    name = item["Key"].rsplit("/", 1)[-1]
                    if _SHA256.fullmatch(name):
                        yield name


def store_for(settings: Settings, kind: StoreKind) -> BlobStore:
    """The store of ``kind`` that ``settings.artifact_url`` selects.

    - unset: ``<data_dir>/artifacts`` or ``<data_dir>/datasets`` (as before object storage);
    - ``s3://bucket/prefix``: keys under ``prefix/artifacts/`` or ``prefix/datasets/``;
    - a directory (or ``file://`` URL): its ``artifacts/`` or ``datasets/`` subdirectory.

    Raises:
        ValueError: an URL scheme other than s3 or file, or an s3 URL without a bucket.
    """
    if kind not in ("artifacts", "datasets"):
        raise ValueError(f"store_for expected kind 'artifacts' or 'datasets'. Received: {kind!r}")
    url = settings.artifact_url
    if not url:
        return LocalStore(Path(settings.data_dir) / kind)
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(
                "SPECTRAL_ARTIFACT_URL expected s3://bucket/prefix. Received no bucket"
            )
        prefix = "/".join(part for part in (parsed.path.strip("/"), kind) if part)
        return S3Store(parsed.netloc, prefix)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path) / kind)
    if parsed.scheme == "":
        return LocalStore(Path(url) / kind)
    raise ValueError(
        "SPECTRAL_ARTIFACT_URL expected s3://bucket/prefix or a local directory. "
        f"Received scheme {parsed.scheme!r}"
    )


# -- boto3 plumbing -------------------------------------------------------------------------

_client_lock = threading.Lock()
_clients: dict[tuple[int, str | None, bool], Any] = {}

# The readiness probe's budget: one attempt, a couple of seconds (kubelet's default probe
# timeout is 1 s, and /readyz runs its other checks too).
PROBE_CONNECT_TIMEOUT_S = 2.0
PROBE_READ_TIMEOUT_S = 2.0


def _default_s3_client(probe: bool = False) -> Any:
    """One client per process and endpoint (and one for readiness probes): boto3 clients are
    thread-safe, but their connection pools must not cross a fork (Celery's prefork pool)."""
    # An empty variable means "not set", as boto3 itself reads it.
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    key = (os.getpid(), endpoint, probe)
    with _client_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = new_s3_client(endpoint, probe=probe)
        return client


def new_s3_client(endpoint_url: str | None = None, probe: bool = False) -> Any:
    """A boto3 S3 client with bounded retries and timeouts.

    Args:
        endpoint_url: An S3-compatible endpoint (MinIO, a test server); None for AWS, or for
            boto3's own ``AWS_ENDPOINT_URL`` lookup.
        probe: For readiness checks: a single attempt with short timeouts, so that a store
            that is down fails the probe in seconds rather than after every retry.
    """
    import boto3  # imported here: a local-only deployment never pays for it
    from botocore.config import Config

    config = Config(
        # "standard" retries throttling, 5xx and connection errors with backoff, a bounded
        # number of times; past that the caller gets ArtifactStoreUnavailable.
        # (botocore's "max_attempts" counts retries; "total_max_attempts" counts the first try
        # too: a probe makes exactly one.)
        retries={"mode": "standard", "total_max_attempts": 1}
        if probe
        else {"mode": "standard", "max_attempts": 3},
        connect_timeout=PROBE_CONNECT_TIMEOUT_S if probe else 5,
        read_timeout=PROBE_READ_TIMEOUT_S if probe else 60,
        # A custom endpoint (MinIO, a test server) rarely serves bucket subdomains.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # Only send and check checksums where asked (ChecksumSHA256 on put): not every
        # S3-compatible server accepts the newer default CRC trailers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    # HEAD has no body, so its "404" cannot tell a missing key from a missing bucket; the PUT
    # that follows then reports the bucket (NoSuchBucket: unavailable, not missing).
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


@contextmanager
def _mapped_errors(store: S3Store) -> Iterator[None]:
    """Turns boto3's errors into `ArtifactStoreUnavailable`, saying what failed, no secrets."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "unknown")
        raise ArtifactStoreUnavailable(
            f"The artifact store s3://{store.bucket} is unavailable: it answered {code}"
        ) from exc
    except BotoCoreError as exc:
        raise ArtifactStoreUnavailable(
            f"The artifact store s3://{store.bucket} is unavailable: {type(exc).__name__}"
        ) from exc
