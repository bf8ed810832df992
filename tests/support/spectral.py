"""Helpers shared by the spectral library tests: compile settings, random eigenvalues, weight
snapshots, and the environment of child Python processes."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

from spectral.graph import iter_layers, spectral_layers

ROOT = Path(__file__).resolve().parents[2]

COMPILE = {
    "optimizer": "adam",
    "loss": "sparse_categorical_crossentropy",
    "metrics": ["accuracy"],
}


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python that must import this checkout's `spectral`.

    The repository root goes first on PYTHONPATH, before whatever the parent already had there
    (a machine may provide Keras itself through PYTHONPATH).
    """
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


def randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Gives every Spectral layer distinct random eigenvalues and biases, and BN statistics."""
    rng = np.random.default_rng(seed)
    for _, layer in spectral_layers(model):
        layer.diag_end.assign(rng.normal(size=(1, layer.units)).astype("float32"))
        layer.diag_start.assign(
            rng.normal(scale=0.3, size=layer.diag_start.shape).astype("float32")
        )
        if layer.bias is not None:
            layer.bias.assign(rng.normal(size=(layer.units,)).astype("float32"))
    for _, layer in iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable in layer.weights:
                shape = variable.shape
                values = (
                    rng.uniform(0.5, 1.5, size=shape)
                    if "variance" in variable.name
                    else (rng.normal(size=shape))
                )
                variable.assign(values.astype("float32"))
    return model


def weights_snapshot(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]
