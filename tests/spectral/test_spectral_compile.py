"""Every model the library compiles gets an optimizer of its own (issue 8, section 1).

A compile dictionary holding an optimizer instance used to be compiled into the pruned model as
that same instance; `fit` on the result then failed with "Unknown variable".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest

from spectral import (
    Spectral,
    eigenvalue_pretraining,
    metric_based_pruning,
    prune,
    prune_percentile,
)
from spectral.compiling import fresh_optimizer
from tests.support.spectral import randomize

LOSS = "sparse_categorical_crossentropy"


def _schedule() -> keras.optimizers.schedules.LearningRateSchedule:
    return keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=2, decay_rate=0.5)


OPTIMIZERS: dict[str, Callable[[], Any]] = {
    "instance": lambda: keras.optimizers.Adam(1e-3),
    "string": lambda: "adam",
    "schedule": lambda: keras.optimizers.SGD(learning_rate=_schedule()),
}


def _prune_percentile(model, data, compile_dictionary):
    return prune_percentile(model, 50, compile_dictionary)


def _metric_based_pruning(model, data, compile_dictionary):
    return metric_based_pruning(
        model, {"x": data[0], "y": data[1]}, compile_dictionary, "loss", 50, 25
    )


def _prune(model, data, compile_dictionary):
    return prune(model, percentile=50, compile_dictionary=compile_dictionary).model


def _eigenvalue_pretraining(model, data, compile_dictionary):
    fit = {"x": data[0], "y": data[1], "epochs": 1, "batch_size": 16}
    return eigenvalue_pretraining(
        model, fit, compile_dictionary=compile_dictionary, percentile=50
    ).model


FUNCTIONS = {
    "prune_percentile": _prune_percentile,
    "metric_based_pruning": _metric_based_pruning,
    "prune": _prune,
    "eigenvalue_pretraining": _eigenvalue_pretraining,
}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.normal(size=(48, 6)).astype("float32"), rng.integers(0, 3, size=48)


def _model() -> keras.Model:
    return randomize(
        keras.Sequential(
            [
                keras.Input((6,)),
                Spectral(12, activation="relu", use_bias=True),
                Spectral(8, activation="relu", use_bias=True),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )
    )


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_result_trains_and_the_callers_optimizer_stays_usable(name, kind, data) -> None:
    x, y = data
    optimizer = OPTIMIZERS[kind]()
    compile_dictionary = {"optimizer": optimizer, "loss": LOSS}
    model = _model()
    model.compile(**compile_dictionary)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)

    small = FUNCTIONS[name](model, data, compile_dictionary)

    assert small.optimizer is not optimizer
    assert small.optimizer is not model.optimizer
    before = [np.array(w) for w in small.trainable_weights]
    history = small.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = small.trainable_weights
    assert any(not np.allclose(b, np.array(a)) for b, a in zip(before, after, strict=True))
    if kind == "schedule":
        schedule = small.optimizer.get_config()["learning_rate"]
        assert schedule["class_name"] == "ExponentialDecay"
        assert schedule["config"]["decay_steps"] == 2
    # The caller's optimizer still belongs to the caller's model.
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)


def test_fresh_optimizer_copies_config_and_keeps_identifiers() -> None:
    optimizer = keras.optimizers.SGD(learning_rate=_schedule(), momentum=0.7)
    fresh = fresh_optimizer(optimizer)
    assert type(fresh) is keras.optimizers.SGD and fresh is not optimizer
    assert fresh.get_config() == optimizer.get_config()
    assert fresh_optimizer("adam") == "adam"
    identifier = {"class_name": "Adam", "config": {"learning_rate": 0.1}}
    assert fresh_optimizer(identifier) is identifier
