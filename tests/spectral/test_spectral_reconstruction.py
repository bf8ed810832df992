"""Tests for `spectral.reconstruction`: least-squares and mean re-fits of the consumers of removed
nodes, on real digits models (Sequential, branched Functional, nested, with BatchNormalization)."""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest

import spectral
from spectral import Spectral
from spectral.graph import iter_layers
from spectral.reconstruction import reconstruct
from tests.support.spectral import COMPILE, randomize

PERCENT = 80


def _fit(model: keras.Model, digits: tuple[np.ndarray, ...], epochs: int) -> keras.Model:
    x_train, y_train, _, _ = digits
    # A higher learning rate than Adam's default: a well-trained model in few epochs.
    model.compile(**{**COMPILE, "optimizer": keras.optimizers.Adam(3e-3)})
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    return model


def _accuracy(model: keras.Model, digits: tuple[np.ndarray, ...]) -> float:
    _, _, x_test, y_test = digits
    # A direct call: `evaluate` would trace a test function for every pruned model.
    scores = keras.ops.convert_to_numpy(model(x_test, training=False))
    return float(np.mean(np.argmax(scores, axis=-1) == y_test))


def _predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype=np.float64)


def _pre_activation(model: keras.Model, name: str, x: np.ndarray) -> np.ndarray:
    """`inputs @ kernel + bias` of a top-level layer, computed independently of the library."""
    layer = model.get_layer(name)
    inputs = _predict(keras.Model(model.inputs[0], layer.input), x)
    out = inputs @ np.asarray(layer.kernel, dtype=np.float64)
    return out if layer.bias is None else out + np.asarray(layer.bias, dtype=np.float64)


def _names(model: keras.Model) -> tuple[str, str, str]:
    """The trained model's layer names: Keras numbers automatic names per process, so the
    names depend on what the session built before."""
    first, second, head = (layer.name for layer in model.layers)
    return first, second, head


def _kept(original: Spectral, pruned: Spectral) -> np.ndarray:
    # The fixtures' eigenvalues are distinct, so membership identifies the kept nodes.
    return np.flatnonzero(np.isin(original.eigenvalues, pruned.eigenvalues))


def _prune(model: keras.Model, percent: float = PERCENT, **kwargs: object) -> keras.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # masked-layer warnings are asserted where they matter
        return spectral.prune_percentile(model, percent, COMPILE, **kwargs)


@pytest.fixture(scope="module")
def branched_model(digits: tuple[np.ndarray, ...]) -> keras.Model:
    """Two Spectral branches joined by Concatenate, then an Add of two views of one layer."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((64,), name="pixels")
    a = Spectral(48, activation="relu", use_bias=True, name="a")(inputs)
    b = Spectral(32, activation="tanh", name="b")(inputs)
    joined = keras.layers.Concatenate(name="cat")([a, b])
    # No bias, relu/tanh inputs (act(0) = 0): compaction adds no bias, so `h` is fitted without.
    h = Spectral(40, activation="sigmoid", name="h")(joined)
    merged = keras.layers.Add(name="add")(
        [keras.layers.Dropout(0.1, name="drop")(h), keras.layers.BatchNormalization(name="bn")(h)]
    )
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(merged)
    return _fit(keras.Model(inputs, outputs, name="branched"), digits, epochs=8)


@pytest.fixture(scope="module")
def nested_model(digits: tuple[np.ndarray, ...]) -> keras.Model:
    """An encoder model (Spectral, BatchNormalization, Spectral) used as a layer, then a head."""
    keras.utils.set_random_seed(4)
    encoder_in = keras.Input((64,))
    h = Spectral(48, activation="relu", use_bias=True, name="enc1")(encoder_in)
    h = keras.layers.BatchNormalization(name="enc_bn")(h)
    h = Spectral(32, activation="tanh", use_bias=True, name="enc2")(h)
    encoder = keras.Model(encoder_in, h, name="encoder")
    inputs = keras.Input((64,))
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(encoder(inputs))
    return _fit(keras.Model(inputs, outputs, name="nested"), digits, epochs=4)


def test_least_squares_reduces_each_consumers_error(
    trained_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    x_train = digits[0]
    pruned = _prune(trained_model)
    result = reconstruct(trained_model, pruned, x_train)
    _, second, head = _names(trained_model)
    # Spectral -> Spectral -> Dense: both later layers lost inputs.
    assert [e.layer for e in result.layers] == [second, head]
    assert result.reconstructed == [second, head]
    assert result.rows == len(x_train)
    for entry in result.layers:
        assert entry.error_after < 0.5 * entry.error_before, entry
    # The reported error is the real one: recompute it from the models themselves.
    for entry in result.layers:
        original = _pre_activation(trained_model, entry.layer, x_train)
        target_nodes = (
            _kept(trained_model.get_layer(entry.layer), pruned.get_layer(entry.layer))
            if entry.layer == second
            else np.arange(original.shape[1])
        )
        target = original[:, target_nodes]
        fitted = _pre_activation(pruned, entry.layer, x_train)
        error = np.linalg.norm(fitted - target) / np.linalg.norm(target)
        assert error == pytest.approx(entry.error_after, rel=1e-3, abs=1e-5)


def test_accuracy_after_reconstruction_far_above_plain_slicing(
    trained_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    unpruned = _accuracy(trained_model, digits)
    plain = _prune(trained_model)
    rebuilt = _prune(trained_model)
    reconstruct(trained_model, rebuilt, digits[0])
    sliced, reconstructed = _accuracy(plain, digits), _accuracy(rebuilt, digits)
    # Measured: about 0.33 sliced, 0.88 reconstructed, 0.96 unpruned at 80 % removed.
    assert reconstructed > sliced + 0.3
    assert reconstructed > unpruned - 0.15


def test_nothing_removed_changes_nothing(
    trained_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    x_train = digits[0]
    pruned = _prune(trained_model, 0)
    before = pruned.get_weights()
    result = reconstruct(trained_model, pruned, x_train)
    assert result.layers == []
    for old, new in zip(before, pruned.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_exact_layer_keeps_its_weights(
    trained_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    """Removed nodes without outgoing weights: the sliced model is already exact."""
    model = keras.models.clone_model(trained_model)
    model.set_weights(trained_model.get_weights())
    first, second, _ = _names(model)
    source, consumer = model.get_layer(first), model.get_layer(second)
    silent = np.arange(0, 64, 4)
    eigenvalues = source.eigenvalues.copy()
    eigenvalues[silent] = 1e-6 * (1 + np.arange(silent.size))  # the smallest, so removed first
    source.diag_end.assign(eigenvalues[None, :].astype("float32"))
    base = np.array(consumer.base)
    base[silent] = 0.0  # ... and nothing reads them
    consumer.base.assign(base)
    # 14 of 112 nodes: the cutoff lands among the silenced ones.
    pruned = spectral.prune_percentile(model, 100 * 14 / 112, COMPILE, scope="global")
    assert pruned.get_layer(first).units < 64
    assert pruned.get_layer(second).units == 48
    before = [np.array(w) for w in pruned.get_layer(second).weights]
    result = reconstruct(model, pruned, digits[0])
    (entry,) = result.layers
    assert entry.layer == second
    assert entry.error_before < 1e-6
    assert entry.error_after < 1e-6
    for old, new in zip(before, pruned.get_layer(second).weights, strict=True):
        np.testing.assert_allclose(np.array(new), old, rtol=1e-4, atol=1e-6)


def test_branched_model_with_concatenate_and_add(
    branched_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    plain = _prune(branched_model, 70)
    pruned = _prune(branched_model, 70)
    assert pruned.get_layer("h").bias is None  # fitted without a bias column
    result = reconstruct(branched_model, pruned, digits[0])
    assert result.reconstructed == ["h", "head"]
    for entry in result.layers:
        assert entry.error_after < entry.error_before, entry
    # Measured: about 0.24 sliced, 0.76 reconstructed, 0.95 unpruned.
    assert _accuracy(pruned, digits) > _accuracy(plain, digits) + 0.3


def test_nested_model_with_batchnorm_between(
    nested_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    plain = _prune(nested_model, 70)
    pruned = _prune(nested_model, 70)
    assert pruned.get_layer("encoder").get_layer("enc1").units < 48
    result = reconstruct(nested_model, pruned, digits[0])
    # enc2 reads enc1 through BatchNormalization inside the encoder; the head is outside it.
    assert result.reconstructed == ["encoder/enc2", "head"]
    for entry in result.layers:
        assert entry.error_after < entry.error_before, entry
    # Measured: about 0.19 sliced, 0.50 reconstructed, 0.95 unpruned.
    assert _accuracy(pruned, digits) > _accuracy(plain, digits) + 0.2


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_spectral_consumer_keeps_its_eigenvalues(
    activation: str, digits: tuple[np.ndarray, ...]
) -> None:
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            Spectral(32, activation=activation, name="first"),
            Spectral(24, activation=activation, name="second"),
            keras.layers.Dense(10, name="head"),
        ]
    )
    randomize(model)  # distinct eigenvalues, non-zero diag_start: a full direct-space kernel
    pruned = _prune(model, 60)
    second = pruned.get_layer("second")
    # sigmoid(0) = 0.5 is folded into a bias compaction adds; relu(0) = tanh(0) = 0 add none.
    assert (second.bias is not None) == (activation == "sigmoid")
    start, end = (np.array(v) for v in second.return_diag())
    base = second.return_base()
    result = reconstruct(model, pruned, digits[0])
    assert result.reconstructed == ["second", "head"]
    for entry in result.layers:
        assert entry.error_after < entry.error_before, entry
    new_start, new_end = second.return_diag()
    np.testing.assert_array_equal(new_start, start)
    np.testing.assert_array_equal(new_end, end)
    assert not np.allclose(second.return_base(), base)


def test_chunks_give_the_same_fit_as_one_pass(
    trained_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    x_train = digits[0]
    whole, streamed = _prune(trained_model), _prune(trained_model)
    reconstruct(trained_model, whole, x_train, chunk_size=len(x_train))
    result = reconstruct(trained_model, streamed, x_train, chunk_size=97)
    assert result.rows == len(x_train)
    for a, b in zip(whole.get_weights(), streamed.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_near_zero_eigenvalue_difference_keeps_that_entry(
    trained_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    _, second, _ = _names(trained_model)
    pruned = _prune(trained_model)
    consumer = pruned.get_layer(second)
    start, end = consumer.return_diag()
    start[0, 0] = end[0, 3]  # kernel[0, 3] = base[0, 3] * 0: base cannot express a change
    consumer.diag_start.assign(start)
    old_base = consumer.return_base()
    result = reconstruct(trained_model, pruned, digits[0])
    entry = result.layers[0]
    assert entry.status == "reconstructed"
    assert "1 kernel entries kept" in entry.reason
    new_base = consumer.return_base()
    assert new_base[0, 3] == old_base[0, 3]
    assert np.all(np.isfinite(new_base))
    assert not np.allclose(new_base, old_base)


def test_equal_eigenvalues_need_the_kept_nodes_passed(
    trained_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    model = keras.models.clone_model(trained_model)
    model.set_weights(trained_model.get_weights())
    pruned = _prune(model)
    _, second, head = _names(model)
    layer = model.get_layer(second)
    kept = _kept(layer, pruned.get_layer(second))
    removed = np.setdiff1d(np.arange(layer.units), kept)
    # A removed node now has a kept node's eigenvalue: which one survived cannot be told.
    eigenvalues = layer.eigenvalues.copy()
    eigenvalues[removed[0]] = eigenvalues[kept[0]]
    layer.diag_end.assign(eigenvalues[None, :].astype("float32"))
    result = reconstruct(model, pruned, digits[0])
    assert "ambiguous" in result.skipped[second]
    assert "pass keep=" in result.skipped[second]
    result = reconstruct(model, pruned, digits[0], keep={second: kept})
    assert result.reconstructed == [second, head]


def test_mean_compensation_folds_mean_activations_into_the_bias(
    trained_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    x_train = digits[0]
    first, second, _ = _names(trained_model)
    pruned = _prune(trained_model)
    kernel_before = np.array(pruned.get_layer(second).kernel)
    result = reconstruct(trained_model, pruned, x_train, method="mean")
    assert result.method == "mean"
    for entry in result.layers:
        assert entry.status == "reconstructed"
        assert entry.error_after < entry.error_before, entry
    # First consumer, inputs not re-fitted: bias = b + mean(removed activations) @ W[removed].
    original = trained_model.get_layer(second)
    kept_in = _kept(trained_model.get_layer(first), pruned.get_layer(first))
    kept_out = _kept(original, pruned.get_layer(second))
    removed = np.setdiff1d(np.arange(64), kept_in)
    activations = _predict(keras.Model(trained_model.inputs[0], original.input), x_train)
    kernel = np.array(original.kernel, dtype=np.float64)[:, kept_out]
    expected = np.array(original.bias)[kept_out] + activations[:, removed].mean(0) @ kernel[removed]
    np.testing.assert_allclose(np.array(pruned.get_layer(second).bias), expected, atol=1e-4)
    # The kernel itself is kept.
    np.testing.assert_allclose(
        np.array(pruned.get_layer(second).kernel), kernel_before, rtol=1e-5, atol=1e-6
    )


def test_masked_layer_and_shared_consumer_are_listed_with_reasons(
    digits: tuple[np.ndarray, ...],
) -> None:
    keras.utils.set_random_seed(6)
    inputs = keras.Input((64,))
    masked = Spectral(24, activation="relu", name="masked")(inputs)
    normed = keras.layers.LayerNormalization(name="norm")(masked)  # cannot be sliced
    sliced = Spectral(24, activation="relu", name="sliced")(inputs)
    shared = keras.layers.Dense(12, name="shared")
    both = keras.layers.Add()([shared(sliced), shared(keras.layers.Dropout(0.1)(sliced))])
    outputs = keras.layers.Dense(10, name="head")(keras.layers.Concatenate()([normed, both]))
    model = keras.Model(inputs, outputs)
    randomize(model)
    with pytest.warns(UserWarning, match="masked"):
        pruned = spectral.prune_percentile(model, 50, COMPILE)
    result = reconstruct(model, pruned, digits[0])
    assert "masked" in result.skipped["masked"]
    assert "called 2 times" in result.skipped["shared"]
    assert result.reconstructed == []
    # Skipped consumers keep the exact fold: the pruned model still matches the masked one.
    masked_copy = spectral.prune_percentile(model, 50, COMPILE, compact=False)
    np.testing.assert_allclose(
        _predict(pruned, digits[2]), _predict(masked_copy, digits[2]), atol=1e-4
    )


def test_masked_nodes_of_a_refitted_layer_stay_masked(digits: tuple[np.ndarray, ...]) -> None:
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            Spectral(32, activation="relu", use_bias=True, name="first"),
            # LayerNormalization cannot be sliced, so `second` is masked, yet it is a consumer.
            Spectral(24, activation="relu", use_bias=True, name="second"),
            keras.layers.LayerNormalization(name="norm"),
            keras.layers.Dense(10, name="head"),
        ]
    )
    randomize(model)
    with pytest.warns(UserWarning, match="masked"):
        pruned = spectral.prune_percentile(model, 50, COMPILE)
    second = pruned.get_layer("second")
    masked = np.flatnonzero(second.eigenvalues == 0.0)
    assert second.units == 24
    assert 0 < masked.size < 24
    result = reconstruct(model, pruned, digits[0])
    (entry,) = result.layers
    assert entry.layer == "second"
    assert entry.status == "reconstructed"
    assert f"{masked.size} masked nodes kept at act(0)" in entry.reason
    assert entry.error_after < entry.error_before
    # Masked nodes still output act(0): zero base column, eigenvalue and bias.
    assert np.all(second.return_base()[:, masked] == 0.0)
    assert np.all(second.eigenvalues[masked] == 0.0)
    assert np.all(np.array(second.bias)[masked] == 0.0)


def test_report_is_json(trained_model: keras.Model, digits: tuple[np.ndarray, ...]) -> None:
    _, second, head = _names(trained_model)
    result = reconstruct(trained_model, _prune(trained_model), digits[0][:500], chunk_size=128)
    report = json.loads(json.dumps(result.to_dict()))
    assert report["method"] == "least_squares"
    assert report["rows"] == 500
    assert [layer["layer"] for layer in report["layers"]] == [second, head]
    assert {layer["status"] for layer in report["layers"]} == {"reconstructed"}
    assert all(layer["error_after"] < layer["error_before"] for layer in report["layers"])
    assert 0 < report["seconds"] < 60


def test_progress_is_called_per_layer_and_can_cancel(
    trained_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    _, second, head = _names(trained_model)
    calls: list[tuple[float, str]] = []
    reconstruct(
        trained_model, _prune(trained_model), digits[0], progress=lambda f, m: calls.append((f, m))
    )
    assert [message for _, message in calls] == [
        f"reconstructing {second}",
        f"reconstructing {head}",
        "reconstruction done",
    ]

    def cancel(fraction: float, message: str) -> None:
        raise RuntimeError("cancelled")

    pruned = _prune(trained_model)
    before = pruned.get_weights()
    with pytest.raises(RuntimeError, match="cancelled"):
        reconstruct(trained_model, pruned, digits[0], progress=cancel)
    for old, new in zip(before, pruned.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "lstsq"}, "method"),
        ({"ridge": -1.0}, "ridge"),
        ({"ridge": float("nan")}, "ridge"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 1.5}, "chunk_size"),
    ],
)
def test_invalid_arguments(
    trained_model: keras.Model, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=f"Received: {message}="):
        reconstruct(trained_model, trained_model, np.zeros((4, 64), "float32"), **kwargs)


def test_layer_paths_match_between_original_and_pruned(nested_model: keras.Model) -> None:
    # Reconstruction pairs layers by path: compaction must keep every name.
    pruned = _prune(nested_model, 70)
    names = [path for path, layer in iter_layers(nested_model) if layer.weights]
    assert names == [path for path, layer in iter_layers(pruned) if layer.weights]
