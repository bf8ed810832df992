"""One seeded server for the V2 and TF Serving tests: the digits model in two versions (alias
``production`` on version 1, so that the default is not simply the latest) and a model with two
inputs and two outputs, each with the local Keras model that must predict the same numbers."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.api import RunningApi, launch_api
from tests.support.digits import build_digits_model, digits, keras_bytes
from tests.support.uploads import upload, upload_version

DIGITS = "digits"
MULTI = "multi-io"
RTOL = 1e-5
ATOL = 1e-6


@dataclass
class Served:
    api: RunningApi
    # (model id, version) -> the Keras model loaded from the uploaded bytes
    local: dict[tuple[str, int], Any]


def multi_io_model() -> Any:
    """Inputs ``a`` (3 values) and ``b`` (2 values); outputs ``scores`` (2) and ``total`` (1)."""
    import keras

    keras.utils.set_random_seed(1)
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    scores = keras.layers.Dense(2, activation="tanh", name="scores")(joined)
    total = keras.layers.Dense(1, name="total")(joined)
    return keras.Model([a, b], [scores, total])


def _load(data: bytes) -> Any:
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        return keras.saving.load_model(path)


def start_served(work_dir: Path, model_bytes: bytes, env: dict[str, str] | None = None) -> Served:
    api = launch_api(env, work_dir)
    second = keras_bytes(build_digits_model((16, 8), epochs=1))
    multi = keras_bytes(multi_io_model())
    with httpx.Client(base_url=api, timeout=120) as client:
        assert upload(client, DIGITS, model_bytes).status_code == 201
        assert upload_version(client, DIGITS, second).status_code == 201
        assert upload(client, MULTI, multi).status_code == 201
        moved = client.put(f"/models/{DIGITS}/aliases/production", json={"version": 1})
        assert moved.status_code == 200, moved.text
        assert client.put(f"/models/{DIGITS}/aliases/canary", json={"version": 2}).is_success
    local = {(DIGITS, 1): _load(model_bytes), (DIGITS, 2): _load(second), (MULTI, 1): _load(multi)}
    return Served(api, local)


def digits_rows(n: int, start: int = 0) -> np.ndarray:
    return digits()[0][start : start + n]


def multi_inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.random((n, 3), dtype=np.float32), rng.random((n, 2), dtype=np.float32)


def expected(served: Served, model_id: str, version: int, *arrays: np.ndarray) -> list[np.ndarray]:
    model = served.local[(model_id, version)]
    out = model.predict(list(arrays) if len(arrays) > 1 else arrays[0], verbose=0)
    return [np.asarray(o) for o in (out if isinstance(out, list) else [out])]


def assert_close(got: Any, want: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=RTOL, atol=ATOL)
