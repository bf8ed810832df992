"""The digits benchmark problem: data split, the reference Spectral model and its training.

`bench/quality.py` and `bench/pruning_speed.py` both measure this model, so its definition
lives here once: 64 -> Spectral(200, relu) -> Spectral(300, relu) -> Dense(10, softmax), L2 1e-3
on the eigenvectors (`base`) and 5e-3 on the eigenvalues, Adam 1e-3, batch 64.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from spectral import Spectral

logger = logging.getLogger(__name__)

HIDDEN_UNITS = (200, 300)
BASE_L2 = 1e-3
DIAG_L2 = 5e-3
LEARNING_RATE = 1e-3
BATCH_SIZE = 64


@dataclass(frozen=True)
class DigitsSplit:
    """sklearn digits, pixels scaled to [0, 1], stratified 80/20 split (random_state=0)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(test_size: float = 0.2, random_state: int = 0) -> DigitsSplit:
    """Loads sklearn's 8x8 digits and splits them, stratified by class.

    Returns:
        A `DigitsSplit` with float32 inputs of shape `(n, 64)` and int32 labels.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=random_state
    )
    return DigitsSplit(x_train, y_train, x_test, y_test)


def compile_kwargs(learning_rate: float = LEARNING_RATE) -> dict[str, Any]:
    """Keyword arguments for `model.compile`.

    The optimizer is given as a config dict, not an instance, so that every `compile` call
    (the library compiles each pruned model it returns) builds its own fresh Adam: a Keras 3
    optimizer instance is bound to the variables of the first model it trains.
    """
    return {
        "optimizer": {"class_name": "Adam", "config": {"learning_rate": learning_rate}},
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
    }


def build_digits_model(seed: int) -> keras.Model:
    """Builds (uncompiled) the reference digits model with weights drawn from `seed`."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(64,), name="pixels")
    x = inputs
    for i, units in enumerate(HIDDEN_UNITS):
        x = Spectral(
            units,
            activation="relu",
            use_bias=True,
            base_regularizer=keras.regularizers.L2(BASE_L2),
            diag_regularizer=keras.regularizers.L2(DIAG_L2),
            name=f"spectral_{i}",
        )(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="digits_spectral")


def train_digits_model(data: DigitsSplit, seed: int, epochs: int) -> keras.Model:
    """Builds, compiles and trains the reference model on the training split."""
    model = build_digits_model(seed)
    model.compile(**compile_kwargs())
    model.fit(
        data.x_train, data.y_train, epochs=epochs, batch_size=BATCH_SIZE, verbose=0, shuffle=True
    )
    return model


def fit_kwargs(data: DigitsSplit, epochs: int) -> dict[str, Any]:
    """Keyword arguments for `model.fit` on the training split."""
    return {
        "x": data.x_train,
        "y": data.y_train,
        "epochs": epochs,
        "batch_size": BATCH_SIZE,
        "verbose": 0,
    }


def eval_kwargs(data: DigitsSplit) -> dict[str, Any]:
    """Keyword arguments for `model.evaluate` on the test split."""
    return {"x": data.x_test, "y": data.y_test, "batch_size": 256, "verbose": 0}


def accuracy_on_test(model: keras.Model, data: DigitsSplit) -> float:
    """Accuracy of `model` on the test split, computed from predictions (no compile needed).

    A direct call, not `predict`: `predict` would trace a new function for every pruned model.
    """
    probabilities = keras.ops.convert_to_numpy(model(data.x_test, training=False))
    return float(np.mean(np.argmax(probabilities, axis=-1) == data.y_test))


def spectral_units_per_layer(model: keras.Model) -> dict[str, int]:
    """Layer name -> number of output nodes, for the model's Spectral layers."""
    return {layer.name: layer.units for layer in model.layers if isinstance(layer, Spectral)}


def spectral_units(model: keras.Model) -> int:
    """Total number of output nodes over the model's Spectral layers."""
    return sum(spectral_units_per_layer(model).values())
