"""The fast evaluation path must report exactly what `model.evaluate` reports."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from spectral import Spectral
from spectral.evaluation import SINGLE_BATCH_MAX_ROWS, evaluate, fits_one_batch
from tests.support.spectral import COMPILE


@pytest.fixture(scope="module")
def model_and_data() -> tuple[keras.Model, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)).astype("float32")
    y = rng.integers(0, 3, size=300)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((12,)), Spectral(16, activation="relu"), keras.layers.Dense(3, "softmax")]
    )
    model.compile(**COMPILE)
    return model, x, y


def testfits_one_batch_matches_evaluate(model_and_data) -> None:
    model, x, y = model_and_data
    weights = np.linspace(0.5, 2.0, len(y)).astype("float32")
    for data in ({"x": x, "y": y}, {"x": x, "y": y, "sample_weight": weights, "batch_size": 7}):
        assert fits_one_batch(data)
        want = model.evaluate(**data, return_dict=True, verbose=0)
        got = evaluate(model, data)
        assert set(got) == set(want)
        for name, value in want.items():
            assert got[name] == pytest.approx(float(value), rel=1e-5), name


@pytest.mark.parametrize(
    "data",
    [
        {"steps": 2},
        {"callbacks": []},
        {"y_rows": 299},
        {"rows": SINGLE_BATCH_MAX_ROWS + 1},
    ],
    ids=["steps", "callbacks", "mismatched-rows", "too-many-rows"],
)
def test_other_inputs_go_through_evaluate(model_and_data, data) -> None:
    model, x, y = model_and_data
    rows = data.pop("rows", None)
    if rows is not None:
        x = np.resize(x, (rows, x.shape[1]))
        y = np.resize(y, rows)
    y_rows = data.pop("y_rows", None)
    if y_rows is not None:
        y = y[:y_rows]
    eval_dictionary = {"x": x, "y": y, **data}
    assert not fits_one_batch(eval_dictionary)
    if y_rows is None and "steps" not in data:
        want = model.evaluate(**eval_dictionary, return_dict=True, verbose=0)
        assert evaluate(model, eval_dictionary)["loss"] == pytest.approx(float(want["loss"]))
