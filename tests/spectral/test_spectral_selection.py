"""Percentile semantics, scopes, `min_units`, excluded layers and argument errors."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from spectral import Spectral, prune, prune_percentile
from spectral.graph import spectral_layers
from tests.support.spectral import randomize

L = keras.layers


def three_layer_model() -> keras.Model:
    return randomize(
        keras.Sequential(
            [
                keras.Input((5,)),
                Spectral(20, activation="relu", name="s1"),
                Spectral(15, activation="relu", name="s2"),
                Spectral(4, activation="softmax", name="head"),
            ]
        ),
        seed=5,
    )


def _kept_eigenvalues(model: keras.Model) -> dict[str, np.ndarray]:
    return {p: layer.eigenvalues for p, layer in spectral_layers(model)}


@pytest.mark.parametrize("percentile", [0, 25, 50, 80, 100])
def test_global_percentile_removes_exactly_the_nodes_below(percentile) -> None:
    model = three_layer_model()
    eigs = _kept_eigenvalues(model)
    cutoff = np.percentile(np.abs(np.concatenate([eigs["s1"], eigs["s2"]])), percentile)
    result = prune(model, percentile=percentile, min_units=1)
    after = _kept_eigenvalues(result.model)
    for name in ("s1", "s2"):
        expected = eigs[name][np.abs(eigs[name]) >= cutoff]
        if expected.size == 0:  # min_units keeps the largest
            expected = eigs[name][[np.argmax(np.abs(eigs[name]))]]
        np.testing.assert_array_equal(after[name], expected)
    np.testing.assert_array_equal(after["head"], eigs["head"])  # output layer untouched
    assert result.report.cutoff == pytest.approx(cutoff)
    assert result.report.units_after["head"] == 4


def test_layer_scope_uses_one_cutoff_per_layer() -> None:
    model = three_layer_model()
    eigs = _kept_eigenvalues(model)
    result = prune(model, percentile=50, scope="layer")
    after = _kept_eigenvalues(result.model)
    for name in ("s1", "s2"):
        cutoff = np.percentile(np.abs(eigs[name]), 50)
        np.testing.assert_array_equal(after[name], eigs[name][np.abs(eigs[name]) >= cutoff])
        assert result.report.cutoff[name] == pytest.approx(cutoff)
    assert set(result.report.cutoff) == {"s1", "s2"}


def test_min_units_keeps_the_largest_eigenvalues() -> None:
    model = three_layer_model()
    eigs = _kept_eigenvalues(model)
    result = prune(model, percentile=100, min_units=3)
    after = _kept_eigenvalues(result.model)
    for name in ("s1", "s2"):
        top = np.sort(np.argsort(-np.abs(eigs[name]))[:3])
        np.testing.assert_array_equal(after[name], eigs[name][top])


def test_output_layer_through_pass_through_is_never_pruned() -> None:
    inputs = keras.Input((5,))
    hidden = Spectral(12, activation="tanh", name="hidden")(inputs)
    out = L.Dropout(0.2)(Spectral(6, activation="tanh", name="last")(hidden))
    model = randomize(keras.Model(inputs, out))
    result = prune(model, percentile=90)
    assert result.report.units_after["last"] == 6
    assert dict(spectral_layers(result.model))["last"].units == 6
    assert result.report.units_after["hidden"] < 12
    assert result.model.output_shape == model.output_shape


def test_compact_false_masks_same_size() -> None:
    model = three_layer_model()
    masked = prune_percentile(model, 60, compact=False)
    assert masked.count_params() == model.count_params()
    eigs = _kept_eigenvalues(model)
    cutoff = np.percentile(np.abs(np.concatenate([eigs["s1"], eigs["s2"]])), 60)
    layer = dict(spectral_layers(masked))["s1"]
    removed = np.abs(eigs["s1"]) < cutoff
    assert np.all(layer.eigenvalues[removed] == 0)
    assert np.all(layer.return_base()[:, removed] == 0)
    np.testing.assert_array_equal(layer.eigenvalues[~removed], eigs["s1"][~removed])


def test_report_is_json_safe() -> None:
    model = three_layer_model()
    report = prune(model, percentile=30).report
    data = json.loads(json.dumps(report.to_dict()))
    assert data["method"] == "percentile"
    assert data["units_before"] == {"s1": 20, "s2": 15, "head": 4}
    removed = 20 + 15 - data["units_after"]["s1"] - data["units_after"]["s2"]
    assert removed > 0
    assert data["nodes_removed_fraction"] == pytest.approx(removed / 35)
    assert data["params_before"] > data["params_after"]
    assert len(data["eigenvalues"]["s1"]) == 20
    assert data["metric_before"] is None and data["evaluations"] == []


def test_compile_dictionary_compiles_result() -> None:
    model = three_layer_model()
    pruned = prune_percentile(model, 30, {"optimizer": "sgd", "loss": "mse"})
    assert pruned.compiled
    assert pruned.loss == "mse"


@pytest.mark.parametrize("bad", [-0.1, 100.5, 250, float("nan"), "50", None])
def test_percentile_out_of_range(bad) -> None:
    with pytest.raises(ValueError, match="percentile"):
        prune_percentile(three_layer_model(), bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scope": "model"}, "scope"),
        ({"min_units": 0}, "min_units"),
        ({"min_units": 2.5}, "min_units"),
    ],
)
def test_invalid_options(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        prune_percentile(three_layer_model(), 50, **kwargs)


def test_model_without_spectral_layers() -> None:
    model = keras.Sequential([keras.Input((3,)), L.Dense(4), L.Dense(2)])
    with pytest.raises(ValueError, match="no Spectral layers"):
        prune_percentile(model, 50)


def test_model_with_only_output_spectral_layers() -> None:
    model = keras.Sequential([keras.Input((3,)), L.Dense(4), Spectral(2)])
    with pytest.raises(ValueError, match="no prunable Spectral layers"):
        prune_percentile(model, 50)


def test_custom_activation_is_named_as_the_reason() -> None:
    model = keras.Sequential(
        [keras.Input((3,)), Spectral(4, activation=lambda t: t * 2.0, name="odd"), L.Dense(2)]
    )
    with pytest.raises(ValueError, match="'odd' activation is not elementwise"):
        prune_percentile(model, 50)


@pytest.mark.parametrize("bad", ["5", -1.0, float("nan"), None])
def test_invalid_budget(bad) -> None:
    with pytest.raises(ValueError, match="max_delta_percent"):
        prune(three_layer_model(), eval_dictionary={"x": None}, max_delta_percent=bad)


def test_metric_search_needs_eval_data() -> None:
    with pytest.raises(ValueError, match="eval_dictionary"):
        prune(three_layer_model())


def test_residual_to_output_is_excluded_not_masked() -> None:
    inputs = keras.Input((6,))
    hidden = Spectral(10, activation="relu", name="hidden")(inputs)
    residual = Spectral(6, activation="tanh", name="residual")(hidden)
    out = L.Activation("relu")(L.Add()([residual, inputs]))
    model = randomize(keras.Model(inputs, out))
    result = prune(model, percentile=60)
    assert result.report.units_after["residual"] == 6
    assert result.report.masked_layers == []
    np.testing.assert_array_equal(
        dict(spectral_layers(result.model))["residual"].eigenvalues,
        dict(spectral_layers(model))["residual"].eigenvalues,
    )
    assert result.report.units_after["hidden"] < 10


def test_subclassed_model_is_rejected() -> None:
    class Custom(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = Spectral(4, activation="relu")
            self.head = L.Dense(2)

        def call(self, x):
            return self.head(self.hidden(x))

    model = Custom()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="Sequential or Functional"):
        prune_percentile(model, 50)


def test_layer_scope_metric_search_and_reloaded_model(tmp_path, trained_model, digits) -> None:
    _, _, x_val, y_val = digits
    path = tmp_path / "trained.keras"
    trained_model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    model, report = prune(
        loaded,
        eval_dictionary={"x": x_val, "y": y_val},
        compare_metric="accuracy",
        max_delta_percent=5,
        percentile_step=20,
        scope="layer",
    )
    assert report.scope == "layer" and isinstance(report.cutoff, dict)
    assert report.metric_after >= report.metric_before * 0.95 - 1e-6
    assert model.compiled  # compiled like the loaded model, which kept its compile config
