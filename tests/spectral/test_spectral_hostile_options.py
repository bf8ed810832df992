"""The compression options used carelessly: odd calibration and recovery data, odd numbers for
`steps`, `temperature` and `epochs`, and models that stretch reconstruction (no prunable layer,
all-zero eigenvalues, consumers without a bias, saturating activations at 90 % removed, several
inputs). Each case either works, with finite weights and errors that did not grow, or raises a
ValueError/TypeError that names the argument and what was received."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import pytest

from spectral import Spectral, metric_based_pruning, prune, prune_percentile
from spectral.reconstruction import reconstruct
from spectral.recovery import recover
from tests.support.spectral import COMPILE, randomize

LS = "least_squares"
RNG = np.random.default_rng(11)
X = RNG.normal(size=(64, 8)).astype("float32")
Y = RNG.integers(0, 3, size=64)


def _model(activation: str = "relu", *, use_bias: bool = True, output: str = "softmax") -> Any:
    model = keras.Sequential(
        [
            keras.Input((8,)),
            Spectral(16, activation=activation, use_bias=use_bias, name="first"),
            Spectral(12, activation=activation, use_bias=use_bias, name="second"),
            keras.layers.Dense(3, activation=output, name="head"),
        ]
    )
    return randomize(model, seed=3)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return _model()


def _with_nan(x: np.ndarray, value: float = np.nan) -> np.ndarray:
    x = x.copy()
    x[3, 2] = value
    return x


def _finite(model: keras.Model, x: Any = X) -> bool:
    outputs = keras.ops.convert_to_numpy(model(x, training=False))
    weights = model.get_weights()
    return bool(np.all(np.isfinite(outputs)) and all(np.all(np.isfinite(w)) for w in weights))


def _rows() -> Iterator[np.ndarray]:
    yield from X


def _dataset(*arrays: np.ndarray) -> Any:
    tf = pytest.importorskip("tensorflow")
    return tf.data.Dataset.from_tensor_slices(arrays if len(arrays) > 1 else arrays[0]).batch(8)


def _prune(model: keras.Model, percent: float = 50, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prune(model, percentile=percent, compile_dictionary=COMPILE, **kwargs)


# -- calibration data ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calibration", "error", "message"),
    [
        ({"x": _with_nan(X)}, ValueError, r"calibration\['x'\]` holds 1 NaN or infinite"),
        ({"x": _with_nan(X, np.inf)}, ValueError, r"calibration\['x'\]` holds 1 NaN or infinite"),
        ({"x": X[:0]}, ValueError, r"at least one row.*shape \(0, 8\)"),
        ({"x": X[:, :5]}, ValueError, r"shape \('rows', 8\).*shape \(64, 5\)"),
        ({"x": X[0]}, ValueError, r"shape \('rows', 8\).*shape \(8,\)"),
        ({"x": np.full((4, 8), "a")}, TypeError, r"numeric array.*dtype <U1"),
        ({"x": [[1.0, 2.0], [3.0]]}, TypeError, r"calibration\['x'\]` must be a numeric array"),
        ({"x": "pixels"}, TypeError, r"calibration\['x'\]` must be a numeric array"),
        ({"x": None}, ValueError, r"calibration\['x'\]` must hold calibration inputs"),
        ({"y": X}, ValueError, r"exactly one entry, `x`.*Received: calibration=\{'y'"),
        ({"x": X, "y": Y}, ValueError, r"exactly one entry, `x`"),
        (X, ValueError, r"must be a dict.*Received: calibration=<ndarray of shape \(64, 8\)>"),
        ("dataset", TypeError, r"not a dataset or generator.*calibration\['x'\]=<_BatchDataset>"),
        ("generator", TypeError, r"not a dataset or generator.*calibration\['x'\]=<generator>"),
    ],
    ids=[
        "nan",
        "inf",
        "no-rows",
        "wrong-width",
        "one-dimensional",
        "strings",
        "ragged-list",
        "string",
        "none",
        "missing-x",
        "extra-key",
        "not-a-dict",
        "dataset",
        "generator",
    ],
)
def test_bad_calibration_is_named(
    model: keras.Model, calibration: Any, error: type[Exception], message: str
) -> None:
    if isinstance(calibration, str):
        calibration = {"x": _dataset(X) if calibration == "dataset" else _rows()}
    with pytest.raises(error, match=message):
        _prune(model, calibration=calibration, reconstruct=LS)


def test_bad_calibration_is_named_by_the_metric_search(model: keras.Model) -> None:
    with pytest.raises(ValueError, match=r"calibration\['x'\]` holds 1 NaN"):
        metric_based_pruning(
            model, {"x": X, "y": Y}, COMPILE, calibration={"x": _with_nan(X)}, reconstruct=LS
        )


@pytest.mark.parametrize(
    "x",
    [
        X[:1],  # one row
        X[:5],  # fewer rows than any consumer's input features (16 and 12)
        X.tolist(),  # a Python list of rows
        np.round(X * 4).astype("int64"),
        X.astype("float64"),
        X > 0,
        [X],  # a list of one array for the one input, as Keras accepts it
    ],
    ids=["one-row", "fewer-rows-than-features", "list", "int", "float64", "bool", "[array]"],
)
@pytest.mark.parametrize("method", [LS, "mean"])
def test_odd_but_valid_calibration_reconstructs(model: keras.Model, x: Any, method: str) -> None:
    small, report = _prune(model, calibration={"x": x}, reconstruct=method)
    assert _finite(small)
    assert report.calibration_rows == len(x if not isinstance(x, list) or len(x) > 1 else x[0])
    assert set(report.reconstruction_errors) == {"second", "head"}
    for errors in report.reconstruction_errors.values():
        assert errors["after"] <= errors["before"]


def test_int_calibration_fits_like_the_same_rows_as_floats(model: keras.Model) -> None:
    rows = np.round(X * 4)
    as_int = _prune(model, calibration={"x": rows.astype("int32")}, reconstruct=LS).model
    as_float = _prune(model, calibration={"x": rows.astype("float32")}, reconstruct=LS).model
    for a, b in zip(as_int.get_weights(), as_float.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# -- steps and temperature ----------------------------------------------------------------------


@pytest.mark.parametrize("steps", [0, -1, True, 1.5, 2.0, "2", None])
def test_bad_steps_are_named(model: keras.Model, steps: Any) -> None:
    with pytest.raises(ValueError, match=r"`steps` must be a positive integer. Received: steps="):
        _prune(model, steps=steps)


def test_more_steps_than_nodes_removes_the_asked_share(model: keras.Model) -> None:
    # 28 prunable nodes, 40 rounds: each round's percentile alone would remove a node, so
    # without a cap 40 rounds removed 23 nodes instead of 14.
    small, report = _prune(model, 50, steps=40, calibration={"x": X}, reconstruct="mean")
    assert _finite(small)
    assert report.steps == 40 and len(report.rounds) == 40
    units = small.get_layer("first").units + small.get_layer("second").units
    one_step = _prune(model, 50).model
    assert units == one_step.get_layer("first").units + one_step.get_layer("second").units


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), True, "2", None])
def test_bad_temperature_is_named(model: keras.Model, temperature: Any) -> None:
    with pytest.raises(ValueError, match=r"`temperature` must be a number > 0. Received: temper"):
        _prune(model, recover={"x": X, "epochs": 1}, distill=True, temperature=temperature)


@pytest.mark.parametrize("distill", ["yes", 1, None])
def test_bad_distill_is_named(model: keras.Model, distill: Any) -> None:
    with pytest.raises(ValueError, match=r"`distill` must be True or False. Received: distill="):
        _prune(model, recover={"x": X, "y": Y, "epochs": 1}, distill=distill)


# -- recovery -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recover_options", "error", "message"),
    [
        ({"x": X, "y": Y, "epochs": 0}, ValueError, r"recover\['epochs'\]=0"),
        ({"x": X, "y": Y, "epochs": -3}, ValueError, r"recover\['epochs'\]=-3"),
        ({"x": X, "y": Y, "epochs": True}, ValueError, r"recover\['epochs'\]=True"),
        ({"x": X, "y": Y, "epochs": 2.5}, ValueError, r"recover\['epochs'\]=2.5"),
        ({"x": X, "y": Y, "epochs": 1, "batch_size": 0}, ValueError, r"batch_size'\]=0"),
        ({"x": X, "y": Y}, ValueError, r"`recover` needs \['epochs'\]"),
        ({"y": Y, "epochs": 1}, ValueError, r"`recover` needs \['x'\]"),
        ({"x": X, "epochs": 1}, ValueError, r"needs \['y'\].*distill=True"),
        ({"x": X, "y": Y, "epochs": 1, "lr": 1}, ValueError, r"unknown: \['lr'\]"),
        ({"x": X, "y": Y[:10], "epochs": 1}, ValueError, r"one row per input row \(64\)"),
        ({"x": _with_nan(X), "y": Y, "epochs": 1}, ValueError, r"recover\['x'\]` holds 1 NaN"),
        ({"x": X, "y": Y * np.nan, "epochs": 1}, ValueError, r"recover\['y'\]` holds 64 NaN"),
        ({"x": X[:0], "y": Y[:0], "epochs": 1}, ValueError, r"recover\['x'\]` must hold at"),
        ({"x": X[:, :3], "y": Y, "epochs": 1}, ValueError, r"recover\['x'\]` must have shape"),
        ("dataset", TypeError, r"recover\['x'\]` must be arrays of rows, not a dataset"),
    ],
    ids=[
        "epochs-0",
        "epochs-negative",
        "epochs-bool",
        "epochs-float",
        "batch-size-0",
        "no-epochs",
        "no-x",
        "no-y",
        "unknown-key",
        "y-rows",
        "nan-x",
        "nan-y",
        "no-rows",
        "wrong-width",
        "dataset",
    ],
)
def test_bad_recovery_is_named(
    model: keras.Model, recover_options: Any, error: type[Exception], message: str
) -> None:
    if isinstance(recover_options, str):
        recover_options = {"x": _dataset(X, Y), "epochs": 1}
    with pytest.raises(error, match=message):
        _prune(model, recover=recover_options)


def test_huge_batch_size_trains_on_one_batch(model: keras.Model) -> None:
    small, report = _prune(model, recover={"x": X, "y": Y, "epochs": 1, "batch_size": 10**9})
    assert report.recovery_epochs == 1
    assert _finite(small)


def test_python_lists_train(model: keras.Model) -> None:
    small, report = _prune(model, recover={"x": X.tolist(), "y": Y.tolist(), "epochs": 1})
    assert report.recovery_epochs == 1
    assert _finite(small)


def test_distilling_a_model_without_softmax_matches_its_outputs() -> None:
    regression = _model(output="linear")
    before = keras.ops.convert_to_numpy(regression(X))
    plain = _prune(regression, 60).model
    small, report = prune(
        regression,
        percentile=60,
        compile_dictionary={"optimizer": keras.optimizers.Adam(1e-2), "loss": "mse"},
        recover={"x": X, "epochs": 20},
        distill=True,
    )
    assert report.distill is True
    assert _finite(small)

    # Without softmax the soft loss is the squared error to the teacher's outputs: it shrinks.
    def gap(pruned: keras.Model) -> float:
        return float(np.mean((keras.ops.convert_to_numpy(pruned(X)) - before) ** 2))

    assert gap(small) < gap(plain)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"epochs": 0}, ValueError, "epochs=0"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"x": X[:0], "y": Y[:0]}, ValueError, r"`x` must hold at least one row"),
        ({"x": _with_nan(X)}, ValueError, r"`x` holds 1 NaN"),
        ({"y": Y[:3]}, ValueError, r"`y` must have one row per input row \(64\)"),
        ({"x": "dataset"}, TypeError, r"`x` must be arrays of rows, not a dataset"),
    ],
    ids=["epochs-0", "batch-size-0", "no-rows", "nan", "y-rows", "dataset"],
)
def test_recover_directly_names_bad_arguments(
    model: keras.Model, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    small = _prune(model).model
    before = small.get_weights()
    arguments: dict[str, Any] = {"x": X, "y": Y, "epochs": 1, "compile_dictionary": COMPILE}
    arguments.update(kwargs)
    if isinstance(arguments["x"], str):
        arguments["x"] = _dataset(X)
    with pytest.raises(error, match=message):
        recover(small, **arguments)
    for old, new in zip(before, small.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


# -- reconstruct --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (_with_nan(X), ValueError, r"`x` holds 1 NaN or infinite values"),
        (X[:, :3], ValueError, r"`x` must have shape \('rows', 8\).*\(64, 3\)"),
        (X[:0], ValueError, r"`x` must hold at least one row"),
        ("dataset", TypeError, r"`x` must be arrays of rows, not a dataset"),
        ("generator", TypeError, r"`x` must be arrays of rows, not a dataset"),
    ],
    ids=["nan", "wrong-width", "no-rows", "dataset", "generator"],
)
def test_reconstruct_names_bad_rows(
    model: keras.Model, x: Any, error: type[Exception], message: str
) -> None:
    if isinstance(x, str):
        x = _dataset(X) if x == "dataset" else _rows()
    small = _prune(model).model
    with pytest.raises(error, match=message):
        reconstruct(model, small, x)


def test_reconstruct_takes_a_python_list(model: keras.Model) -> None:
    small = _prune(model).model
    result = reconstruct(model, small, X.tolist())
    assert result.rows == len(X)
    assert result.reconstructed == ["second", "head"]


def test_model_without_prunable_layer() -> None:
    dense = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(3)]
    )
    before = dense.get_weights()
    result = reconstruct(dense, dense, X)
    assert result.layers == [] and result.reconstructed == []
    for old, new in zip(before, dense.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    with pytest.raises(ValueError, match="no Spectral layers to prune. Received: model="):
        prune_percentile(dense, 50, COMPILE, calibration={"x": X}, reconstruct=LS)


def test_non_finite_activations_keep_the_exact_fold(model: keras.Model) -> None:
    original = keras.models.clone_model(model)
    original.set_weights(model.get_weights())
    small = _prune(original).model
    before = small.get_layer("head").get_weights()
    kernel = np.array(original.get_layer("head").kernel)
    kernel[:, 0] = np.nan  # the original's output, the head's targets, are NaN from here on
    original.get_layer("head").kernel.assign(kernel)
    result = reconstruct(original, small, X)
    assert result.reconstructed == ["second"]
    assert result.skipped["head"] == "non-finite activations on the calibration rows"
    for old, new in zip(before, small.get_layer("head").get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_layer_with_all_zero_eigenvalues() -> None:
    model = _model()
    model.get_layer("first").diag_end.assign(np.zeros((1, 16), "float32"))
    # 16 of 28 magnitudes are 0, so the 40th percentile is 0 and nothing is strictly below it.
    _, report = _prune(model, 40, calibration={"x": X}, reconstruct=LS)
    assert report.units_after == report.units_before and report.reconstruction_errors == {}
    # Above 16/28 the cutoff is positive: all zero nodes go, `min_units` keeps one.
    small, report = _prune(model, 70, calibration={"x": X}, reconstruct=LS)
    assert small.get_layer("first").units == 1
    assert _finite(small)
    assert set(report.reconstruction_errors) == {"second", "head"}
    for errors in report.reconstruction_errors.values():
        assert errors["after"] <= errors["before"]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_consumers_without_bias(activation: str) -> None:
    model = _model(activation, use_bias=False)
    small, report = _prune(model, 60, calibration={"x": X}, reconstruct=LS)
    # act(0) = 0: compaction adds no bias, so the consumer is fitted without one.
    assert small.get_layer("second").bias is None
    assert set(report.reconstruction_errors) == {"second", "head"}
    assert _finite(small)
    _, mean_report = _prune(model, 60, calibration={"x": X}, reconstruct="mean")
    assert mean_report.reconstruction_fallbacks == {
        "second": "the layer has no bias to take the mean compensation"
    }


def test_sigmoid_consumer_without_bias_gets_one_for_the_fold() -> None:
    model = _model("sigmoid", use_bias=False)
    small, report = _prune(model, 60, calibration={"x": X}, reconstruct="mean")
    assert small.get_layer("second").bias is not None  # sigmoid(0) = 0.5 needed a bias
    assert set(report.reconstruction_errors) == {"second", "head"}


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_saturating_activations_at_90_percent(activation: str) -> None:
    model = _model(activation)
    plain = _prune(model, 90).model
    small, report = _prune(model, 90, calibration={"x": X}, reconstruct=LS)
    assert _finite(small)
    assert small.get_layer("first").units + small.get_layer("second").units <= 4
    for errors in report.reconstruction_errors.values():
        assert errors["after"] < errors["before"]
    want = keras.ops.convert_to_numpy(model(X))

    def gap(pruned: keras.Model) -> float:
        return float(np.linalg.norm(keras.ops.convert_to_numpy(pruned(X)) - want))

    assert gap(small) < gap(plain)


# -- several inputs -----------------------------------------------------------------------------


def _two_inputs() -> keras.Model:
    left, right = keras.Input((4,), name="left"), keras.Input((4,), name="right")
    h = Spectral(16, activation="relu", name="first")(keras.layers.Concatenate()([left, right]))
    h = Spectral(12, activation="relu", name="second")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(h)
    return randomize(keras.Model([left, right], outputs), seed=5)


@pytest.mark.parametrize("structure", ["list", "dict"])
def test_several_inputs(structure: str) -> None:
    model = _two_inputs()
    parts = [X[:, :4], X[:, 4:]]
    x: Any = parts if structure == "list" else {"left": parts[0], "right": parts[1]}
    small, report = _prune(
        model, calibration={"x": x}, reconstruct=LS, recover={"x": x, "epochs": 1}, distill=True
    )
    assert set(report.reconstruction_errors) == {"second", "head"}
    assert report.recovery_epochs == 1
    assert _finite(small, parts)


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (X, TypeError, r"2 inputs: `calibration\['x'\]` must be a list of 2 arrays"),
        ([X[:, :4]], TypeError, r"2 inputs"),
        ({"left": X[:, :4]}, TypeError, r"keyed \['left', 'right'\]. Received:.*\['left'\]"),
        ([X[:, :4], X[:10, 4:]], ValueError, r"same number of rows. Received: rows \[10, 64\]"),
        ([X[:, :4], X], ValueError, r"calibration\['x'\]\[1\]` must have shape \('rows', 4\)"),
    ],
    ids=["one-array", "too-few", "missing-key", "rows-differ", "wrong-width"],
)
def test_several_inputs_named_errors(x: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _prune(_two_inputs(), calibration={"x": x}, reconstruct=LS)
