"""The folded numpy forward equals the Keras model's own predict (1e-5 relative)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from service.serving.forward import fold
from spectral import prune_percentile
from spectral.layer import Spectral
from tests.support.spectral import randomize

ACTIVATIONS = ["relu", "tanh", "sigmoid", "softmax", "gelu", "linear", "elu", "softplus", "swish"]


def _assert_exact(model: keras.Model, features: int) -> None:
    folded = fold(model)
    assert folded is not None
    rng = np.random.default_rng(1)
    for batch in (1, 300):
        x = rng.normal(size=(batch, features)).astype("float32")
        expected = model.predict(x, verbose=0)
        got = folded(x)
        assert got.dtype == np.float32 and got.shape == expected.shape
        # Relative to each row's scale: an output that cancels to ~0 has no relative precision.
        scale = np.abs(expected).max(axis=-1, keepdims=True) + 1e-30
        assert np.max(np.abs(got - expected) / scale) < 1e-5


def _randomized(model: keras.Model, seed: int = 0) -> keras.Model:
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign((rng.normal(size=weight.shape) * 0.4).astype("float32"))
    return randomize(model, seed)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_spectral_and_dense_mixed_fold_exactly(activation: str, use_bias: bool) -> None:
    model = keras.Sequential(
        [
            keras.Input((20,)),
            Spectral(16, activation=activation, use_bias=use_bias),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(12, activation=activation, use_bias=use_bias),
            Spectral(5, use_bias=use_bias),
            keras.layers.Activation(activation),
        ]
    )
    _assert_exact(_randomized(model), 20)


def test_functional_chain_with_batchnorm_and_activation_layers_folds() -> None:
    inputs = keras.Input((10,))
    x = Spectral(8, use_bias=True)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.LeakyReLU(negative_slope=0.2)(x)
    x = keras.layers.Dense(6)(x)
    x = keras.layers.ELU()(x)
    x = keras.layers.Softmax()(x)
    _assert_exact(_randomized(keras.Model(inputs, x)), 10)


def test_a_pruned_library_model_folds_exactly() -> None:
    model = keras.Sequential(
        [keras.Input((30,)), Spectral(24, activation="relu", use_bias=True), Spectral(4)]
    )
    pruned = prune_percentile(_randomized(model), 40)
    assert pruned.layers[0].units < 24
    _assert_exact(pruned, 30)


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_models_loaded_from_keras_files_fold_exactly(kind: str, tmp_path: Path) -> None:
    # What the service folds: a model loaded from its .keras file, not the one in memory. A
    # loaded Sequential's inner layers carry several inbound nodes (regression: such models,
    # the quick-start's among them, were served through Keras instead).
    layers = [
        Spectral(48, activation="relu", use_bias=True),
        Spectral(32, activation="tanh", use_bias=True),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]
    if kind == "sequential":
        model = keras.Sequential([keras.Input((64,), name="pixels"), *layers])
    else:
        x = inputs = keras.Input((64,), name="pixels")
        for layer in layers:
            x = layer(x)
        model = keras.Model(inputs, x)
    path = tmp_path / "m.keras"
    _randomized(model).save(path)
    _assert_exact(keras.models.load_model(path), 64)


def test_what_cannot_be_folded_is_left_to_keras() -> None:
    inputs = keras.Input((8,))
    merged = keras.layers.Add()([keras.layers.Dense(4)(inputs), keras.layers.Dense(4)(inputs)])
    assert fold(keras.Model(inputs, merged)) is None
    two = [keras.Input((3,)), keras.Input((2,))]
    joined = keras.layers.Concatenate()(two)
    assert fold(keras.Model(two, keras.layers.Dense(2)(joined))) is None
    relu6 = keras.Sequential([keras.Input((4,)), keras.layers.ReLU(max_value=6.0)])
    assert fold(relu6) is None
    odd = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="hard_silu")])
    assert fold(odd) is None
