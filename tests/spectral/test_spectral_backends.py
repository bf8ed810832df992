"""The library on the JAX backend, in a subprocess (the backend is fixed per process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.spectral import ROOT, subprocess_env

SCRIPT = r"""
import sys
import numpy as np
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
import spectral
from spectral import Spectral, prune, prune_percentile
from spectral.graph import spectral_layers

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8)).astype("float32")
y = (x[:, :2].sum(axis=1) > 0).astype("int32")
inputs = keras.Input((8,))
h = Spectral(24, activation="sigmoid", use_bias=True, diag_regularizer="l2")(inputs)
h = keras.layers.Dropout(0.1)(h)
a = keras.layers.Dense(6, activation="relu")(h)
b = Spectral(12, activation="tanh")(h)
out = keras.layers.Dense(2, activation="softmax")(keras.layers.Concatenate()([a, b]))
model = keras.Model(inputs, out)
compile_kwargs = {"optimizer": "adam", "loss": "sparse_categorical_crossentropy",
                  "metrics": ["accuracy"]}
model.compile(**compile_kwargs)
model.fit(x, y, epochs=3, verbose=0)

pruned = prune_percentile(model, 50, compile_kwargs)
masked = prune_percentile(model, 50, compact=False)
np.testing.assert_allclose(pruned.predict(x, verbose=0), masked.predict(x, verbose=0), atol=2e-5)
units = [layer.units for _, layer in spectral_layers(pruned)]
assert units[0] < 24 and units[1] < 12, units

small, report = prune(model, eval_dictionary={"x": x, "y": y}, compile_dictionary=compile_kwargs,
                      compare_metric="loss", max_delta_percent=10, percentile_step=20)
assert report.metric_after <= report.metric_before * 1.1 + 1e-6, report.to_dict()

# Compression options, with an optimizer instance the result must not share.
with_instance = {**compile_kwargs, "optimizer": keras.optimizers.Adam(1e-3)}
rebuilt, report2 = prune(model, eval_dictionary={"x": x, "y": y},
                         compile_dictionary=with_instance, compare_metric="loss",
                         max_delta_percent=10, percentile_step=20, calibration={"x": x},
                         reconstruct="least_squares", recover={"x": x, "epochs": 1},
                         distill=True, steps=2)
assert report2.reconstruction_errors and len(report2.rounds) == 2, report2.to_dict()
assert rebuilt.optimizer is not with_instance["optimizer"]
rebuilt.fit(x, y, epochs=1, verbose=0)

path = sys.argv[1] + "/jax.keras"
pruned.save(path)
loaded = keras.saving.load_model(path, safe_mode=True)
np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)
print("JAX-OK", units, report.percentile)
"""


@pytest.mark.timeout(300)
def test_jax_backend_build_train_prune_save_load(tmp_path) -> None:
    env = subprocess_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "JAX-OK" in proc.stdout
