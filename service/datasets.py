"""Uploaded datasets: `.npz` validation, the `datasets` table and content-addressed storage.

A dataset is an ``.npz`` archive with two arrays, ``x`` (inputs) and ``y`` (targets), whose first
dimensions agree. It is read with ``allow_pickle=False``, so an upload can never run code, and
stored once per content (its id derives from its sha256).
"""

from __future__ import annotations

import io
import logging
import zipfile
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import JSON, BigInteger, String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from service.artifacts import BlobStore, store_for
from service.db import Base, Database, UtcDateTime, utcnow
from service.errors import DatasetNotFound, DatasetRejected, PayloadTooLarge
from service.settings import Settings

logger = logging.getLogger(__name__)

_NUMERIC_KINDS = "biuf"


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str | None] = mapped_column(String(300), nullable=True)
    x_shape: Mapped[list[int]] = mapped_column(JSON)
    y_shape: Mapped[list[int]] = mapped_column(JSON)
    x_dtype: Mapped[str] = mapped_column(String(32))
    y_dtype: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


def dataset_store(settings: Settings) -> BlobStore:
    """Datasets live next to the model artifacts, under their own content-addressed prefix."""
    return store_for(settings, "datasets")


def _expanded_size(data: bytes) -> int:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise DatasetRejected(f"Dataset is not a readable .npz archive: {exc}") from exc


def read_arrays(data: bytes, max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an ``.npz`` upload; returns ``(x, y)``.

    Args:
        data: The archive's bytes.
        max_bytes: Largest size the arrays may have once decompressed (a compressed archive
            of a few KiB can expand to gigabytes).

    Raises:
        DatasetRejected: not an npz archive, arrays missing, object arrays, non-numeric data,
            or first dimensions that disagree.
        PayloadTooLarge: the arrays expand past ``max_bytes``.
    """
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise DatasetRejected("Dataset must be an .npz archive (numpy.savez) with arrays x and y")
    if max_bytes is not None:
        expanded = _expanded_size(data)
        if expanded > max_bytes:
            raise PayloadTooLarge(
                f"Dataset arrays expand to {expanded / 2**20:.3g} MiB, over the "
                f"{max_bytes / 2**20:g} MiB limit (max_dataset_mb)",
                details={"limit_bytes": max_bytes, "expanded_bytes": expanded},
            )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = sorted(archive.files)
            missing = [name for name in ("x", "y") if name not in names]
            if missing:
                raise DatasetRejected(
                    f"Dataset must contain arrays 'x' and 'y'. Received arrays: {names}"
                )
            x, y = archive["x"], archive["y"]
    except DatasetRejected:
        raise
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DatasetRejected(f"Dataset arrays could not be read safely: {exc}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetRejected(f"Dataset is not a readable .npz archive: {exc}") from exc
    for name, array in (("x", x), ("y", y)):
        if array.dtype.kind not in _NUMERIC_KINDS:
            raise DatasetRejected(f"Array {name!r} must be numeric. Received dtype: {array.dtype}")
        if array.ndim == 0 or array.shape[0] == 0:
            raise DatasetRejected(
                f"Array {name!r} needs at least one sample. Received shape: {list(array.shape)}"
            )
    if x.shape[0] != y.shape[0]:
        raise DatasetRejected(
            "Arrays x and y must have the same number of samples. "
            f"Received: x {list(x.shape)}, y {list(y.shape)}"
        )
    return x, y


def create_dataset(
    session: Session,
    store: BlobStore,
    data: bytes,
    *,
    max_bytes: int,
    filename: str | None = None,
) -> tuple[Dataset, bool]:
    """Validate and store an upload; returns the dataset and whether it is new."""
    x, y = read_arrays(data, max_bytes)
    sha256, size = store.put(data)
    dataset_id = f"ds_{sha256[:24]}"
    existing = session.get(Dataset, dataset_id)
    if existing is not None:
        return existing, False
    row = Dataset(
        id=dataset_id,
        sha256=sha256,
        size_bytes=size,
        filename=filename,
        x_shape=[int(d) for d in x.shape],
        y_shape=[int(d) for d in y.shape],
        x_dtype=str(x.dtype),
        y_dtype=str(y.dtype),
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # the same bytes uploaded concurrently
        found = session.get(Dataset, dataset_id)
        assert found is not None
        return found, False
    logger.info("stored dataset %s x=%s y=%s", dataset_id, row.x_shape, row.y_shape)
    return row, True


def store_upload(
    database: Database, settings: Settings, data: bytes, filename: str | None
) -> tuple[Dataset, bool]:
    """`create_dataset` in its own transaction, with the server's store and size limit: what
    an upload (JSON route or web form) does; returns the dataset and whether it is new."""
    with database.session() as session:
        return create_dataset(
            session,
            dataset_store(settings),
            data,
            max_bytes=settings.max_dataset_bytes,
            filename=filename,
        )


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    """The dataset's row.

    Raises:
        DatasetNotFound: no dataset has this id.
    """
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise DatasetNotFound(f"No dataset with id {dataset_id!r}")
    return row


def load_dataset(session: Session, store: BlobStore, dataset_id: str) -> tuple[Any, Any]:
    """The ``(x, y)`` arrays of a stored dataset (checksum verified by the store)."""
    return read_arrays(store.read(get_dataset(session, dataset_id).sha256))
