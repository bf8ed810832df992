"""Consumer rules: one table keyed by layer class, user rules for custom layers, the masking
fallback for unknown ones, inspectable plans, and the linear-map hooks reconstruction uses."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import spectral
from spectral import Spectral, prune
from spectral.graph import Planner
from spectral.plan import UNTOUCHED, Features
from spectral.rules import (
    ConsumerRule,
    DenseRule,
    FeatureWiseRule,
    LayerCall,
    SpectralRule,
    registered_rules,
    rule_for,
    unregister_consumer_rule,
)
from tests.support.spectral import randomize

L = keras.layers


@keras.saving.register_keras_serializable(package="spectral_tests")
class FeatureScale(L.Layer):
    """`x * scale + shift`, one scale and shift per feature."""

    def build(self, input_shape):
        dim = input_shape[-1]
        self.scale = self.add_weight(name="scale", shape=(dim,), initializer="ones")
        self.shift = self.add_weight(name="shift", shape=(dim,), initializer="zeros")

    def call(self, inputs):
        return inputs * self.scale + self.shift

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="spectral_tests")
class Doubling(L.Layer):
    """`2 x`: no weights; taught through a hand-written rule below."""

    def call(self, inputs):
        return inputs * 2.0

    def compute_output_shape(self, input_shape):
        return input_shape


class DoublingRule(ConsumerRule):
    def supports(self, call: LayerCall) -> bool:
        return len(call.inputs) == 1

    def propagate(self, call: LayerCall) -> Features:
        feat = call.inputs[0]
        return Features(kept=feat.kept, const=2.0 * feat.const, sources=feat.sources)


@pytest.fixture
def custom_rules():
    yield
    unregister_consumer_rule(FeatureScale)
    unregister_consumer_rule(Doubling)


def _model(custom: L.Layer) -> keras.Model:
    x = keras.Input((6,))
    h = Spectral(12, activation="sigmoid", use_bias=True)(x)
    h = custom(h)
    h = Spectral(8, activation="relu", use_bias=True)(h)
    model = keras.Model(x, L.Dense(3)(h))
    model = randomize(model, seed=4)
    layer = next(layer for layer in model.layers if isinstance(layer, type(custom)))
    rng = np.random.default_rng(5)
    for variable in layer.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return model


def _inputs() -> np.ndarray:
    return np.random.default_rng(6).normal(size=(32, 6)).astype("float32")


def _exact(model: keras.Model, small: keras.Model) -> None:
    masked = prune(model, percentile=50, compact=False).model
    x = _inputs()
    np.testing.assert_allclose(small.predict(x, verbose=0), masked.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize(
    ("custom", "rule"), [(FeatureScale, FeatureWiseRule), (Doubling, DoublingRule)]
)
def test_registered_rule_prunes_through_a_custom_layer(custom, rule, custom_rules) -> None:
    model = _model(custom())
    assert spectral.register_consumer_rule(custom, rule()) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small, report = prune(model, percentile=50)
    assert [str(w.message) for w in caught if "masked instead" in str(w.message)] == []
    first = model.layers[1].name
    assert report.masked_layers == []
    assert report.units_after[first] == report.active_units_after[first] < 12
    clone = next(layer for layer in small.layers if isinstance(layer, custom))
    for variable in clone.weights:
        assert variable.shape == (report.units_after[first],)
    _exact(model, small)


def test_unregistered_custom_layer_falls_back_to_masking(custom_rules) -> None:
    model = _model(FeatureScale())
    assert rule_for(model.layers[2]) is None
    with pytest.warns(
        UserWarning, match=r"masked instead of sliced: consumer '.*' \(FeatureScale\)"
    ):
        small, report = prune(model, percentile=50)
    first = model.layers[1].name
    assert report.masked_layers == [first]
    assert report.units_after[first] == 12 > report.active_units_after[first]
    _exact(model, small)


def test_rules_do_not_reach_subclasses_unless_they_inherit(custom_rules) -> None:
    class Scaled(FeatureScale):
        pass

    class CustomSpectral(Spectral):
        pass

    spectral.register_consumer_rule(FeatureScale, FeatureWiseRule())
    assert isinstance(rule_for(FeatureScale()), FeatureWiseRule)
    assert rule_for(Scaled()) is None
    assert rule_for(L.Dense(2)) is registered_rules()[L.Dense]
    assert rule_for(type("MyDense", (L.Dense,), {})(2)) is None
    assert isinstance(rule_for(CustomSpectral(2)), SpectralRule)


def test_register_returns_the_previous_rule_and_validates(custom_rules) -> None:
    first, second = FeatureWiseRule(), FeatureWiseRule()
    assert spectral.register_consumer_rule(FeatureScale, first) is None
    assert spectral.register_consumer_rule(FeatureScale, second) is first
    assert unregister_consumer_rule(FeatureScale) is second
    assert unregister_consumer_rule(FeatureScale) is None
    with pytest.raises(TypeError, match="Received: layer_class=<class 'int'>"):
        spectral.register_consumer_rule(int, first)
    with pytest.raises(TypeError, match="Received: rule="):
        spectral.register_consumer_rule(FeatureScale, object())


def test_plan_is_inspectable_before_it_is_applied() -> None:
    model = randomize(
        keras.Sequential(
            [
                keras.Input((5,)),
                Spectral(10, activation="relu"),
                L.Dropout(0.2),
                L.BatchNormalization(),
                Spectral(6, activation="relu"),
                L.Dense(2),
            ]
        )
    )
    first, second = model.layers[0], model.layers[3]
    keep = {id(first): np.array([1, 3, 4]), id(second): np.array([0, 5])}
    plan = Planner(model, keep).run()
    assert plan.conflicts == {}
    summary = {entry["layer"]: entry for entry in plan.summary()}
    assert summary[first.name] == {
        "layer": first.name,
        "rule": "SpectralRule",
        "inputs_kept": [None],
        "keep": [1, 3, 4],
        "mask": None,
    }
    assert summary[model.layers[1].name]["rule"] == "PassThroughRule"
    assert summary[model.layers[2].name]["rule"] == "BatchNormalizationRule"
    assert summary[second.name]["inputs_kept"] == [3]
    assert summary[second.name]["keep"] == [0, 5]
    assert summary[model.layers[4].name] == {
        "layer": model.layers[4].name,
        "rule": "DenseRule",
        "inputs_kept": [2],
        "keep": None,
        "mask": None,
    }
    # Planning changed nothing: the model keeps its sizes until a plan is applied.
    assert [layer.units for layer in (first, second)] == [10, 6]


def test_dense_linear_map_round_trip() -> None:
    layer = L.Dense(3)
    layer.build((None, 4))
    rule = DenseRule()
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(4, 3)), rng.normal(size=3)
    held = rule.set_linear_map(layer, kernel, bias)
    assert held.shape == (4, 3) and not held.any()
    got_kernel, got_bias = rule.linear_map(layer)
    np.testing.assert_allclose(got_kernel, kernel, rtol=1e-6)
    np.testing.assert_allclose(got_bias, bias, rtol=1e-6)
    no_bias = L.Dense(3, use_bias=False)
    no_bias.build((None, 4))
    assert rule.linear_map(no_bias)[1] is None
    with pytest.raises(ValueError, match="has no bias"):
        rule.set_linear_map(no_bias, kernel, bias)


def test_spectral_set_linear_map_solves_for_base_with_fixed_eigenvalues() -> None:
    layer = Spectral(4, use_bias=True)
    layer.build((None, 3))
    rng = np.random.default_rng(1)
    layer.diag_start.assign(rng.normal(size=(3, 1)).astype("float32"))
    diag_end = rng.normal(size=(1, 4)).astype("float32")
    diag_end[0, 2] = layer.diag_start.numpy()[0, 0]  # no eigenvalue gap at (0, 2)
    layer.diag_end.assign(diag_end)
    old_base = layer.base.numpy().copy()
    eigenvalues = layer.eigenvalues.copy()
    rule = SpectralRule()
    kernel, bias = rng.normal(size=(3, 4)), rng.normal(size=4)
    held = rule.set_linear_map(layer, kernel, bias)
    assert np.argwhere(held).tolist() == [[0, 2]]
    np.testing.assert_array_equal(layer.eigenvalues, eigenvalues)
    got_kernel, got_bias = rule.linear_map(layer)
    np.testing.assert_allclose(got_kernel[~held], kernel[~held], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_bias, bias, rtol=1e-6)
    assert np.isfinite(layer.base.numpy()).all()
    assert layer.base.numpy()[0, 2] == old_base[0, 2]


def test_absorbing_rules_end_the_removal() -> None:
    model = randomize(keras.Sequential([keras.Input((3,)), Spectral(4), L.Dense(2)]))
    dense = model.layers[1]
    rule = rule_for(dense)
    assert rule.absorbs and isinstance(rule, DenseRule)
    feat = Features(kept=np.array([0, 2]), const=np.zeros(4), sources=frozenset({1}))
    call = LayerCall(dense, [feat], [(None, 4)], None, lambda f, why: None)
    assert rule.propagate(call) is UNTOUCHED
