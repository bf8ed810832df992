"""Tests of the `Spectral` layer, modelled on what Keras's own `run_layer_test` checks."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import spectral
from spectral import Spectral
from tests.support.spectral import subprocess_env


def test_output_shape_and_weights() -> None:
    layer = Spectral(5, activation="relu", use_bias=True)
    out = layer(np.ones((3, 4), dtype="float32"))
    assert tuple(out.shape) == (3, 5)
    assert sorted(w.name for w in layer.weights) == ["base", "bias", "diag_end", "diag_start"]
    shapes = {w.name: tuple(w.shape) for w in layer.weights}
    assert shapes == {"base": (4, 5), "diag_start": (4, 1), "diag_end": (1, 5), "bias": (5,)}
    assert layer.compute_output_shape((None, 4)) == (None, 5)
    assert layer.eigenvalues.shape == (5,)


def test_trainable_flags_and_alias() -> None:
    layer = Spectral(3, is_base_trainable=False, is_input_layer=True, is_diag_end_trainable=False)
    layer.build((None, 2))
    assert [w.name for w in layer.trainable_weights] == ["diag_start"]
    assert len(layer.non_trainable_weights) == 2
    assert layer.get_config()["is_diag_start_trainable"] is True
    default = Spectral(3)
    default.build((None, 2))
    assert [w.name for w in default.trainable_weights] == ["base", "diag_end"]


def test_rank3_input_works_like_dense() -> None:
    layer = Spectral(6, use_bias=True)
    x = np.random.default_rng(0).normal(size=(2, 7, 4)).astype("float32")
    out = np.asarray(layer(x))
    assert out.shape == (2, 7, 6)
    base, (start, end), bias = layer.return_base(), layer.return_diag(), np.asarray(layer.bias)
    np.testing.assert_allclose(out, x @ (base * (start - end)) + bias, rtol=1e-5, atol=1e-5)


def test_known_weights_match_numpy() -> None:
    rng = np.random.default_rng(3)
    layer = Spectral(3, activation="tanh", use_bias=True)
    layer.build((None, 4))
    base = rng.normal(size=(4, 3)).astype("float32")
    start = rng.normal(size=(4, 1)).astype("float32")
    end = rng.normal(size=(1, 3)).astype("float32")
    bias = rng.normal(size=(3,)).astype("float32")
    for variable, value in zip(
        (layer.base, layer.diag_start, layer.diag_end, layer.bias),
        (base, start, end, bias),
        strict=True,
    ):
        variable.assign(value)
    x = rng.normal(size=(5, 4)).astype("float32")
    expected = np.tanh(x @ (base * (start - end)) + bias)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.direct_space(), (base * (start - end)).T, rtol=1e-6)
    np.testing.assert_allclose(layer.eigenvalues, end[0])


def test_default_init_is_minus_base() -> None:
    layer = Spectral(4)
    layer.build((None, 3))
    np.testing.assert_allclose(layer.direct_space(), -layer.return_base().T)


def test_diag_regularizer_l2_uses_param() -> None:
    layer = Spectral(3, diag_regularizer="l2", diag_regularizer_param=0.25)
    assert isinstance(layer.diag_regularizer, keras.regularizers.L2)
    assert layer.diag_regularizer.l2 == pytest.approx(0.25)
    layer.build((None, 2))
    # diag_start (zeros) adds nothing; diag_end (ones) adds 0.25 * 3.
    assert float(sum(layer.losses)) == pytest.approx(0.75, rel=1e-5)


def test_config_round_trip() -> None:
    layer = Spectral(
        7,
        activation="sigmoid",
        use_bias=True,
        base_initializer=keras.initializers.RandomNormal(stddev=0.2),
        diag_regularizer="l2",
        diag_regularizer_param=1e-3,
        bias_constraint=keras.constraints.NonNeg(),
        name="spec",
    )
    config = layer.get_config()
    clone = Spectral.from_config(config)
    assert clone.get_config() == config
    assert config["base_initializer"]["class_name"] == "RandomNormal"
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, Spectral)
    assert restored.get_config() == config


def test_keras_file_round_trip_safe_mode(tmp_path, rng) -> None:
    model = keras.Sequential(
        [keras.Input((5,)), Spectral(8, activation="relu", use_bias=True), Spectral(2)]
    )
    x = rng.normal(size=(10, 5)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.layers[0], Spectral)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_reload_in_fresh_process_after_import_spectral(tmp_path, rng) -> None:
    import subprocess
    import sys
    from pathlib import Path

    model = keras.Sequential([keras.Input((3,)), Spectral(4, activation="tanh", use_bias=True)])
    x = rng.normal(size=(4, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    script = (
        "import sys, numpy as np, keras, spectral\n"
        "d = sys.argv[1]\n"
        "m = keras.saving.load_model(d + '/m.keras', safe_mode=True)\n"
        "np.testing.assert_allclose(m.predict(np.load(d + '/x.npy'), verbose=0),"
        " np.load(d + '/y.npy'), atol=1e-6)\n"
        "print('RELOAD-OK')\n"
    )
    root = Path(spectral.__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
        env=subprocess_env(TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RELOAD-OK" in proc.stdout


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"units": -3}, r"Received: units=-3"),
        ({"units": 0}, r"Received: units=0"),
        ({"units": 2.5}, r"Received: units=2.5"),
        ({"units": 4, "diag_regularizer_param": -1.0}, r"diag_regularizer_param=-1.0"),
        ({"units": 4, "use_bias": "yes"}, r"Received: use_bias=yes"),
        ({"units": 4, "activation": "nope"}, r"`activation`.*Received: activation='nope'"),
        ({"units": 4, "diag_regularizer": "l3"}, r"Received: diag_regularizer='l3'"),
        ({"units": 4, "base_initializer": "nope"}, r"Received: base_initializer='nope'"),
        ({"units": 4, "bias_constraint": "nope"}, r"Received: bias_constraint='nope'"),
        ({"units": 4, "is_input_layer": "yes"}, r"Received: is_input_layer=yes"),
    ],
)
def test_invalid_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        Spectral(**kwargs)


def test_rejects_rank1_input() -> None:
    layer = Spectral(3)
    with pytest.raises(ValueError):
        layer(np.ones((4,), dtype="float32"))
