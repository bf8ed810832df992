"""The suite's digits data and digits models: one loader, one split, one model builder."""

from __future__ import annotations

import io
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_ROWS = 1400


@cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits: ``x`` float32 in [0, 1] of shape (1797, 64), ``y`` int64 labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The one train/test split: a seeded shuffle, then 1400 training rows and 397 test rows."""
    x, y = digits()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:TRAIN_ROWS], y[:TRAIN_ROWS], x[TRAIN_ROWS:], y[TRAIN_ROWS:]


def digits_npz(*, n: int = 400, features: int = 64) -> bytes:
    """The first ``n`` digits as an .npz upload (``features`` != 64 gives a wrong shape)."""
    x, y = digits()
    return npz_bytes(x[:n, :features], y[:n])


def npz_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue()


def build_digits_model(
    hidden: tuple[int, int] = (32, 16), *, epochs: int = 3, compiled: bool = True
) -> Any:
    """64 -> Spectral -> Spectral -> Dense(10, softmax), seeded.

    ``compiled`` models are trained for ``epochs`` on all digits; uncompiled ones are saved
    without a compile config, as a model that was never trained here would be.
    """
    import keras

    from spectral import Spectral

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            Spectral(hidden[0], activation="relu"),
            Spectral(hidden[1], activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    if compiled:
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(*digits(), epochs=epochs, batch_size=64, verbose=0)
    return model


def keras_bytes(model: Any) -> bytes:
    """The model saved as a .keras file, as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()
