"""Fixtures for the spectral library tests: digits data, a trained model, a random generator."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from spectral import Spectral
from tests.support.spectral import COMPILE


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    y = data.target.astype("int32")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


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
