"""``spectral quickstart``: a small trained Spectral model and matching data, in seconds.

It trains 64 -> Spectral -> Spectral -> Dense(10) on scikit-learn's 8x8 digits and writes
``digits.keras`` (compiled with accuracy, so metric jobs and promotion gates can evaluate it)
and ``digits.npz`` (arrays ``x``, float32 in [0, 1], and ``y``, int64 labels): what README's
examples upload.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from service.cli.output import console, emit_json, error

QUICKSTART_EXTRA = (
    'pip install "spectral-pruning[service]" (or: pip install tensorflow scikit-learn)'
)


def digits_arrays() -> tuple[Any, Any]:
    """sklearn's digits: ``x`` float32 in [0, 1] of shape (1797, 64), ``y`` int64 labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


def train_digits_model(x: Any, y: Any, *, hidden: tuple[int, int], epochs: int, seed: int) -> Any:
    """The quick-start model, trained: relu Spectral layers with bias and L2 on eigenvalues."""
    import keras

    from spectral import Spectral

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],), name="pixels"),
            Spectral(hidden[0], activation="relu", use_bias=True, diag_regularizer="l2"),
            Spectral(hidden[1], activation="relu", use_bias=True, diag_regularizer="l2"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def quickstart(
    directory: Annotated[
        Path, typer.Argument(help="Where to write digits.keras and digits.npz.")
    ] = Path("."),
    epochs: Annotated[int, typer.Option(min=1, max=1000, help="Training epochs.")] = 15,
    seed: Annotated[int, typer.Option(help="Random seed (weights and shuffling).")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the paths and accuracy as one JSON document.")
    ] = False,
) -> None:
    """Trains a small Spectral model on scikit-learn's digits (seconds on a CPU) and writes
    DIRECTORY/digits.keras and DIRECTORY/digits.npz, the files README's examples use."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import numpy as np

        x, y = digits_arrays()
        model = train_digits_model(x, y, hidden=(64, 32), epochs=epochs, seed=seed)
    except ModuleNotFoundError as exc:
        error(f"`spectral quickstart` needs {exc.name}, which is not installed: {QUICKSTART_EXTRA}")
        raise typer.Exit(code=2) from exc
    directory.mkdir(parents=True, exist_ok=True)
    model_path, data_path = directory / "digits.keras", directory / "digits.npz"
    model.save(model_path)
    np.savez(data_path, x=x, y=y)
    accuracy = float(model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"])
    if as_json:
        emit_json({"model": str(model_path), "data": str(data_path), "accuracy": accuracy})
    console.print(
        f"[bold]quickstart[/]: wrote {escape(str(model_path))} (accuracy {accuracy:.3f} on the "
        f"digits) and {escape(str(data_path))} (x {tuple(x.shape)}, y {tuple(y.shape)})"
    )
