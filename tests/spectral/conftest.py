"""Fixtures for the spectral library tests: the digits split, a trained model, an rng."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from spectral import Spectral
from tests.support.digits import digits_split
from tests.support.spectral import COMPILE


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The suite's one digits split (`tests.support.digits`): x_train, y_train, x_val, y_val."""
    return digits_split()


@pytest.fixture(scope="session")
def trained_model(digits: tuple[np.ndarray, ...]) -> keras.Model:
    """A small spectral classifier trained for a few epochs on digits (shared, never mutate)."""
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            Spectral(64, activation="relu", use_bias=True, diag_regularizer="l2"),
            Spectral(48, activation="relu", use_bias=True, diag_regularizer="l2"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_spectral",
    )
    model.compile(**COMPILE)
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0)
    return model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)
