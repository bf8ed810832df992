"""Physical pruning must compute exactly what the masked (zeroed) model computes."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from spectral import Spectral, prune, prune_percentile
from spectral.graph import spectral_layers
from tests.support.spectral import randomize, weights_snapshot

L = keras.layers


def sequential(act: str) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6,)),
            Spectral(12, activation=act, use_bias=True),
            L.Dropout(0.3),
            Spectral(10, activation=act),
            L.Activation("tanh"),
            L.Dense(3),
        ]
    )


def functional(act: str) -> keras.Model:
    inputs = keras.Input((6,))
    x = Spectral(12, activation=act)(inputs)
    x = L.ReLU()(Spectral(9, activation=act, use_bias=True)(x))
    return keras.Model(inputs, L.Dense(4, use_bias=False)(x))


def branched_heads(act: str) -> keras.Model:
    inputs = keras.Input((6,))
    x = Spectral(14, activation=act)(inputs)
    return keras.Model(inputs, [L.Dense(3)(x), L.Dense(2, activation="sigmoid")(x)])


def branched_concat(act: str) -> keras.Model:
    inputs = keras.Input((6,))
    a = Spectral(10, activation=act)(inputs)
    b = Spectral(8, activation=act, use_bias=True)(inputs)
    x = L.Concatenate()([a, inputs, b])
    return keras.Model(inputs, Spectral(3)(x))


def branched_add(act: str) -> keras.Model:
    inputs = keras.Input((6,))
    x = Spectral(11, activation=act, use_bias=True)(inputs)
    y = L.Add()([x, L.LeakyReLU(negative_slope=0.2)(x), L.Dropout(0.1)(x)])
    return keras.Model(inputs, L.Dense(2)(y))


def nested(act: str) -> keras.Model:
    encoder = keras.Sequential(
        [keras.Input((6,)), Spectral(12, activation=act, use_bias=True), L.GaussianNoise(0.1)],
        name="encoder",
    )
    inner_in = keras.Input((12,))
    block = keras.Model(inner_in, Spectral(7, activation=act)(inner_in), name="block")
    inputs = keras.Input((6,))
    return keras.Model(inputs, L.Dense(3)(block(encoder(inputs))))


def batchnorm(act: str) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6,)),
            Spectral(12, activation=act),
            L.BatchNormalization(),
            Spectral(8, activation=act),
            L.BatchNormalization(),
            L.Dense(2),
        ]
    )


def rank3(act: str) -> keras.Model:
    return keras.Sequential(
        [keras.Input((5, 6)), Spectral(10, activation=act), L.Dense(2), L.GlobalAveragePooling1D()]
    )


BUILDERS = [
    sequential,
    functional,
    branched_heads,
    branched_concat,
    branched_add,
    nested,
    batchnorm,
    rank3,
]


def _predict(model: keras.Model, x: np.ndarray) -> list[np.ndarray]:
    out = model.predict(x, verbose=0)
    return [np.asarray(o) for o in (out if isinstance(out, list) else [out])]


def _inputs(model: keras.Model, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(32, *model.input_shape[1:])).astype("float32")


def assert_matches_masked(
    pruned: keras.Model, model: keras.Model, percentile: float, rng: np.random.Generator
) -> None:
    """The pruned model must compute what the same-size masked reference computes."""
    x = _inputs(model, rng)
    reference = prune_percentile(model, percentile, compact=False)
    for got, want in zip(_predict(pruned, x), _predict(reference, x), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_compact_equals_masked(builder, act, rng) -> None:
    keras.utils.set_random_seed(7)
    model = randomize(builder(act))
    before = weights_snapshot(model)
    x = _inputs(model, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # none of these needs masking
        result = prune(model, percentile=40)
    reference = prune_percentile(model, 40, compact=False)
    for got, want in zip(_predict(result.model, x), _predict(reference, x), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    # The masked reference really differs from the original: something was removed.
    assert not all(
        np.allclose(a, b) for a, b in zip(_predict(model, x), _predict(reference, x), strict=True)
    )
    units_before = {p: layer.units for p, layer in spectral_layers(model)}
    units_after = {p: layer.units for p, layer in spectral_layers(result.model)}
    assert units_after == result.report.units_after
    assert sum(units_after.values()) < sum(units_before.values())
    assert result.model.count_params() < model.count_params()
    assert result.report.params_after == result.model.count_params()
    assert result.report.masked_layers == []
    for old, new in zip(before, weights_snapshot(model), strict=True):
        np.testing.assert_array_equal(old, new)


def test_sigmoid_folding_gives_consumer_a_bias(rng) -> None:
    model = randomize(sequential("sigmoid"))
    pruned = prune_percentile(model, 50)
    consumer = [layer for _, layer in spectral_layers(pruned)][1]
    assert consumer.use_bias is True  # the original had none; act(0)=0.5 rows were folded in
    assert_matches_masked(pruned, model, 50, rng)


def test_relu_needs_no_new_bias() -> None:
    model = randomize(sequential("relu"))
    consumer = [layer for _, layer in spectral_layers(prune_percentile(model, 50))][1]
    assert consumer.use_bias is False


def _unsafe_model() -> keras.Model:
    inputs = keras.Input((6,))
    a = Spectral(10, activation="sigmoid", name="to_flatten")(inputs)
    a = L.Flatten()(L.Reshape((5, 2))(a))
    b = Spectral(9, activation="tanh", name="to_dense")(inputs)
    c = Spectral(8, activation="relu", name="to_layernorm")(inputs)
    c = L.LayerNormalization()(c)
    return keras.Model(inputs, L.Dense(2)(L.Concatenate()([a, L.Dense(4)(b), c])))


def test_unsafe_consumers_warn_and_mask(rng) -> None:
    model = randomize(_unsafe_model())
    with pytest.warns(UserWarning, match="to_flatten") as record:
        result = prune(model, percentile=50)
    assert any("to_layernorm" in str(w.message) for w in record)
    assert result.report.masked_layers == ["to_flatten", "to_layernorm"]
    layers = dict(spectral_layers(result.model))
    assert layers["to_flatten"].units == 10 and layers["to_layernorm"].units == 8
    assert layers["to_dense"].units == result.report.units_after["to_dense"] < 9
    assert result.report.units_after["to_flatten"] == 10
    assert (
        np.count_nonzero(layers["to_flatten"].eigenvalues)
        == result.report.active_units_after["to_flatten"]
        < 10
    )
    assert_matches_masked(result.model, model, 50, rng)


def test_add_of_different_node_sets_is_masked(rng) -> None:
    inputs = keras.Input((6,))
    a = Spectral(10, activation="relu", name="left")(inputs)
    b = Spectral(10, activation="relu", name="right")(inputs)
    model = randomize(keras.Model(inputs, L.Dense(2)(L.Add()([a, b]))))
    with pytest.warns(UserWarning, match="masked instead of sliced"):
        result = prune(model, percentile=50)
    assert result.report.masked_layers == ["left", "right"]
    assert_matches_masked(result.model, model, 50, rng)


def test_pruned_model_saves_and_reloads(tmp_path, rng) -> None:
    model = randomize(nested("sigmoid"))
    pruned = prune_percentile(model, 50, {"optimizer": "adam", "loss": "mse"})
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = _inputs(model, rng)
    np.testing.assert_allclose(_predict(loaded, x)[0], _predict(pruned, x)[0], atol=1e-6)
    assert {p: layer.units for p, layer in spectral_layers(loaded)} == {
        p: layer.units for p, layer in spectral_layers(pruned)
    }
    loaded.fit(x, np.zeros((32, 3), "float32"), epochs=1, verbose=0)


def test_pruned_model_trains(rng) -> None:
    model = randomize(branched_concat("relu"))
    pruned = prune_percentile(model, 30, {"optimizer": "sgd", "loss": "mse"})
    history = pruned.fit(_inputs(model, rng), rng.normal(size=(32, 3)), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_shared_consumer_with_different_node_sets_is_masked(rng) -> None:
    inputs = keras.Input((6,))
    shared = L.Dense(3, name="shared")
    a = shared(Spectral(8, activation="sigmoid", name="a")(inputs))
    b = shared(Spectral(8, activation="sigmoid", name="b")(inputs))
    model = randomize(keras.Model(inputs, L.Concatenate()([a, b])))
    with pytest.warns(UserWarning, match="shared layer 'shared'"):
        result = prune(model, percentile=50)
    assert result.report.masked_layers == ["a", "b"]
    assert_matches_masked(result.model, model, 50, rng)


def _reference_by_hand(model: keras.Model, percentile: float, scope: str) -> keras.Model:
    """The masked reference built without the library's selection or masking code: numpy's
    percentile over |diag_end|, then zeroed base columns, eigenvalues and biases."""
    hidden = [layer for layer in model.layers if isinstance(layer, Spectral)][:-1]
    pooled = np.concatenate([np.abs(layer.diag_end.numpy()).ravel() for layer in hidden])
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    for layer in reference.layers:
        if not any(layer.name == h.name for h in hidden):
            continue
        magnitude = np.abs(layer.diag_end.numpy()).ravel()
        cutoff = np.percentile(magnitude if scope == "layer" else pooled, percentile)
        removed = magnitude < cutoff
        base, diag_end = layer.base.numpy(), layer.diag_end.numpy()
        base[:, removed] = 0.0
        diag_end[:, removed] = 0.0
        layer.base.assign(base)
        layer.diag_end.assign(diag_end)
        if layer.bias is not None:
            bias = layer.bias.numpy()
            bias[removed] = 0.0
            layer.bias.assign(bias)
    return reference


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("act", ["relu", "sigmoid"])
def test_compact_equals_an_independent_reference(act: str, scope: str, rng) -> None:
    model = keras.Sequential(
        [
            keras.Input((7,)),
            Spectral(16, activation=act, use_bias=True, name="first"),
            Spectral(11, activation=act, use_bias=True, name="second"),
            Spectral(4, name="head"),  # feeds the output: never pruned
        ]
    )
    randomize(model, seed=3)
    x = rng.normal(size=(32, 7)).astype("float32")
    pruned = prune_percentile(model, 60, scope=scope)
    reference = _reference_by_hand(model, 60, scope)
    np.testing.assert_allclose(
        pruned.predict(x, verbose=0), reference.predict(x, verbose=0), atol=2e-5, rtol=1e-5
    )
    units = {layer.name: layer.units for layer in pruned.layers if isinstance(layer, Spectral)}
    assert units["head"] == 4 and units["first"] < 16 and units["second"] < 11
