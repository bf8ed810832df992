"""Helpers for worker tests: digits datasets and an uncompiled digits model."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path


def uncompiled_digits_model() -> bytes:
    """A small untrained Spectral network for digits saved WITHOUT a compile config."""
    import keras

    from spectral import Spectral

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            Spectral(24, activation="relu"),
            Spectral(10, activation="softmax"),
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits.keras"
        model.save(path)
        return path.read_bytes()


def digits_npz(*, n: int = 400, features: int = 64) -> bytes:
    """The first ``n`` digits as an .npz upload (``features`` != 64 gives a wrong shape)."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x[:n, :features] / 16.0).astype("float32")
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y[:n].astype("int64"))
    return buffer.getvalue()
