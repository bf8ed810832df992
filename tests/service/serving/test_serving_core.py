"""The predict core over a real registry (SQLite): resolution from memory and its invalidation,
exact outputs, per-version status and the fallback when a new version does not load."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from service.db import upgrade_database
from service.errors import ArtifactCorrupted
from service.inference import ModelCache, Predictor
from service.metrics import ServiceMetrics
from service.registry import Registry
from service.serving import PredictCore
from service.serving.core import ServingRegistry
from service.settings import Settings
from spectral.layer import Spectral
from tests.support.s3 import overwrite_blob

REFRESH_S = 0.3


def _model_bytes(tmp_path: Path, seed: int, units: int) -> tuple[bytes, keras.Model]:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((64,)), Spectral(units, activation="relu", use_bias=True), Spectral(10)]
    )
    path = tmp_path / f"m{seed}.keras"
    model.save(path)
    return path.read_bytes(), model


@pytest.fixture
def setup(tmp_path: Path) -> tuple[PredictCore, ServingRegistry, Registry]:
    settings = Settings(data_dir=tmp_path / "data")
    upgrade_database(settings)
    mine = ServingRegistry.from_settings(settings)
    assert isinstance(mine, ServingRegistry)
    # Another API process: its own Registry (and connections) on the same database and store.
    other = Registry.from_settings(settings)
    metrics = ServiceMetrics()
    predictor = Predictor(ModelCache(mine.load_keras_model, 4), 512, metrics)
    core = PredictCore(mine, predictor, max_rows=64, refresh_s=REFRESH_S, capacity=4)
    return core, mine, other


def test_resolution_is_cached_flushed_by_own_writes_and_refreshed_for_others(
    setup: tuple[PredictCore, ServingRegistry, Registry], tmp_path: Path
) -> None:
    core, mine, other = setup
    v1, _ = _model_bytes(tmp_path, 1, 12)
    v2, _ = _model_bytes(tmp_path, 2, 14)
    mine.create_model("m", v1)
    assert core.resolve("m").version == 1
    mine.add_version("m", v2)
    assert core.resolve("m").version == 2  # this process's write: seen at once
    mine.set_alias("m", "production", 1)
    assert core.resolve("m").version == 1
    assert core.resolve("m", alias="production").version == 1

    # Served from memory: no query per request (the database is not asked again).
    start = time.perf_counter()
    for _ in range(2000):
        core.resolve("m")
    assert (time.perf_counter() - start) / 2000 < 50e-6

    moved_at = time.monotonic()
    other.set_alias("m", "production", 2)
    while core.resolve("m").version != 2:
        assert time.monotonic() - moved_at < REFRESH_S + 0.2, "stale past the refresh bound"
        time.sleep(0.01)
    other.add_version("m", v1)
    other.delete_alias("m", "production")
    deadline = time.monotonic() + REFRESH_S + 0.2
    while core.resolve("m").version != 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_predict_is_exact_and_a_version_that_fails_to_load_leaves_the_previous_serving(
    setup: tuple[PredictCore, ServingRegistry, Registry], tmp_path: Path
) -> None:
    core, mine, _ = setup
    v1, model1 = _model_bytes(tmp_path, 1, 12)
    v2, _ = _model_bytes(tmp_path, 2, 14)
    mine.create_model("m", v1)
    x = np.random.default_rng(0).normal(size=(7, 64)).astype("float32")

    async def predict() -> tuple[int, np.ndarray]:
        prediction = await core.predict(core.resolve("m"), [x])
        return prediction.version, prediction.outputs[0]

    version, out = asyncio.run(predict())
    assert version == 1
    np.testing.assert_allclose(out, model1.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    status = core.status("m", 1)
    assert (status.state, status.forward, status.requests) == ("available", "folded", 1)
    assert core.status("m", 2).state == "unloaded"

    record = mine.add_version("m", v2)
    overwrite_blob(mine.store, record.sha256, b"rotten bytes")
    version, out = asyncio.run(predict())
    assert version == 1  # the new default does not load: the previous one answers
    np.testing.assert_allclose(out, model1.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    failed = core.status("m", 2)
    assert failed.state == "failed" and failed.reason
    # Asked for by number, the broken version says so.
    with pytest.raises(ArtifactCorrupted):
        asyncio.run(core.predict(core.resolve("m", version=2), [x]))
