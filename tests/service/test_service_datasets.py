"""Dataset validation and storage (service/datasets.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from service import datasets
from service.db import Database
from service.errors import DatasetNotFound, DatasetRejected
from service.settings import Settings

# Runs a second time in CI with the artifacts in S3 (scripts/test).
pytestmark = pytest.mark.artifact_store


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_reads_x_and_y() -> None:
    x = np.arange(12, dtype="float32").reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    got_x, got_y = datasets.read_arrays(_npz(x=x, y=y))
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip at all", "must be an .npz archive"),
        (_npz(x=np.zeros((3, 2))), r"must contain arrays 'x' and 'y'. Received arrays: \['x'\]"),
        (_npz(x=np.zeros((3, 2)), y=np.zeros(4)), r"same number of samples.*x \[3, 2\], y \[4\]"),
        (_npz(x=np.array(["a", "b"]), y=np.zeros(2)), "must be numeric. Received dtype: <U1"),
        (_npz(x=np.zeros((0, 2)), y=np.zeros(0)), "at least one sample"),
        (
            _npz(x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2)),
            "could not be read safely",
        ),
    ],
)
def test_rejects_bad_uploads(data: bytes, message: str) -> None:
    with pytest.raises(DatasetRejected, match=message):
        datasets.read_arrays(data)


def test_store_once_per_content(db: Database, job_settings: Settings) -> None:
    store = datasets.dataset_store(job_settings)
    data = _npz(x=np.ones((5, 2), dtype="float32"), y=np.arange(5))
    with db.session() as session:
        first, created = datasets.create_dataset(
            session, store, data, max_bytes=1 << 30, filename="a.npz"
        )
    assert created and first.x_shape == [5, 2] and first.y_shape == [5]
    assert first.x_dtype == "float32" and first.size_bytes == len(data)
    with db.session() as session:
        again, created_again = datasets.create_dataset(session, store, data, max_bytes=1 << 30)
        assert (again.id, created_again) == (first.id, False)
        assert datasets.get_dataset(session, first.id).sha256 == first.sha256
        x, y = datasets.load_dataset(session, store, first.id)
        np.testing.assert_array_equal(y, np.arange(5))
        with pytest.raises(DatasetNotFound):
            datasets.get_dataset(session, "ds_missing")


def test_dataset_routes(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    settings = Settings(data_dir=tmp_path, max_dataset_mb=0.01)  # about 10 KiB
    small = _npz(x=np.ones((20, 4), dtype="float32"), y=np.arange(20))
    large = _npz(x=np.ones((2000, 4), dtype="float32"), y=np.arange(2000))
    with TestClient(create_app(settings)) as client:
        created = client.post("/datasets", files={"file": ("d.npz", small)})
        assert created.status_code == 201, created.text
        body = created.json()
        assert (body["x_shape"], body["y_shape"], body["filename"]) == ([20, 4], [20], "d.npz")
        assert created.headers["location"] == f"/datasets/{body['id']}"
        assert client.post("/datasets", files={"file": ("d.npz", small)}).status_code == 200
        assert client.get(f"/datasets/{body['id']}").json() == body
        missing = client.get("/datasets/ds_nope")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "dataset_not_found")
        bad = client.post("/datasets", files={"file": ("d.npz", b"plain text")})
        assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_dataset")
        too_big = client.post("/datasets", files={"file": ("d.npz", large)})
        assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "payload_too_large")
        # A few KiB of compressed zeros that would expand to 5 MB in the API's memory.
        bomb = io.BytesIO()
        np.savez_compressed(bomb, x=np.zeros((20000, 64), dtype="float32"), y=np.zeros(20000))
        assert len(bomb.getvalue()) < settings.max_dataset_bytes
        stored = sorted(datasets.dataset_store(settings).shas())
        expands = client.post("/datasets", files={"file": ("d.npz", bomb.getvalue())})
        assert (expands.status_code, expands.json()["error"]["code"]) == (413, "payload_too_large")
        assert "expand to" in expands.json()["error"]["message"]
        assert sorted(datasets.dataset_store(settings).shas()) == stored
        # The web form stores through the same function: same id, same limits, nothing new.
        form = client.post("/ui/datasets", files={"file": ("d.npz", small)})
        assert form.status_code == 200, form.text
        assert f'Already stored: dataset <code id="dataset-id">{body["id"]}</code>' in form.text
        form_bomb = client.post("/ui/datasets", files={"file": ("d.npz", bomb.getvalue())})
        assert form_bomb.status_code == 413 and "expand to" in form_bomb.text
        assert sorted(datasets.dataset_store(settings).shas()) == stored
