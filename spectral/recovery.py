"""Recovery training: a brief fit of a compact model, optionally distilled from the unpruned one.

This module owns the short training run after pruning: giving the model its own optimizer,
packing the teacher's soft targets next to the labels so that one ordinary Keras loss (the same
on every backend) trains on both, reporting progress per epoch, and leaving the model compiled
the way the user asked.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from spectral.activations import activation_name
from spectral.calibration import count_rows, label_rows, model_rows, slice_rows
from spectral.compiling import compile_arguments
from spectral.keras_graph import is_graph_model
from spectral.search import Progress, notify

logger = logging.getLogger(__name__)

# Probabilities are clipped before the log that turns them back into logits.
_EPSILON = 1e-7
_TEACHER_CHUNK = 1024


def _compile_arguments(
    model: keras.Model, compile_dictionary: Mapping[str, Any] | None
) -> dict[str, Any]:
    if compile_dictionary is not None:
        return compile_arguments(compile_dictionary)
    config = model.get_compile_config() if getattr(model, "compiled", False) else None
    if config:
        # The same deserialisation `compile_from_config` does; it builds new objects.
        return dict(keras.saving.deserialize_keras_object(config))
    raise ValueError(
        "Recovery training needs a loss: pass `compile_dictionary` (keyword arguments of "
        "`model.compile`) or compile the model first. Received: compile_dictionary=None"
    )


def _output_layer(model: keras.Model) -> Any:
    layer = model.layers[-1]
    while is_graph_model(layer) and layer.layers:
        layer = layer.layers[-1]
    return layer


def _ends_in_softmax(model: keras.Model) -> bool:
    layer = _output_layer(model)
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return activation is not None and activation_name(activation) == "softmax"


def _predict(model: keras.Model, x: Any, rows: int) -> np.ndarray:
    parts = []
    for start in range(0, rows, _TEACHER_CHUNK):
        out = model(slice_rows(x, start, min(start + _TEACHER_CHUNK, rows)), training=False)
        parts.append(np.asarray(ops.convert_to_numpy(out), dtype=np.float32))
    return np.concatenate(parts, axis=0)


def _tempered(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(probabilities.astype(np.float64), _EPSILON, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def distillation_loss(
    label_loss: Callable[..., Any] | None,
    label_width: int,
    *,
    softmax: bool,
    temperature: float,
    alpha: float,
) -> Callable[[Any, Any], Any]:
    """A Keras loss over `y_true = [labels | teacher targets]`, packed column-wise.

    For a softmax output the teacher part holds the teacher's temperature-softened
    distribution `softmax(log(p_teacher) / T)`, and the soft loss is
    `T^2 * KL(teacher || softmax(log(p_student) / T))` (the `T^2` keeps its gradients on the
    scale of the label loss, as in Hinton et al. 2015). For any other output the soft loss is
    the mean squared error to the teacher's outputs. With labels (`label_width > 0`) the loss
    is `(1 - alpha) * label_loss + alpha * soft_loss`; without, it is the soft loss alone.
    """

    def loss(y_true: Any, y_pred: Any) -> Any:
        soft = y_true[:, label_width:]
        if softmax:
            student = ops.log_softmax(
                ops.log(ops.clip(y_pred, _EPSILON, 1.0)) / temperature, axis=-1
            )
            teacher_log = ops.log(ops.clip(soft, _EPSILON, 1.0))
            distill = ops.sum(soft * (teacher_log - student), axis=-1) * temperature**2
        else:
            distill = ops.mean(ops.square(y_pred - soft), axis=-1)
        if label_loss is None or label_width == 0:
            return distill
        labels = y_true[:, :label_width]
        return (1.0 - alpha) * label_loss(labels, y_pred) + alpha * distill

    return loss


class _EpochProgress(keras.callbacks.Callback):
    """Reports each finished epoch; an exception from `progress` ends `fit` between epochs."""

    def __init__(self, progress: Progress | None, epochs: int) -> None:
        super().__init__()
        self.progress = progress
        self.epochs = epochs
        self.done = 0

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.done = epoch + 1
        loss = (logs or {}).get("loss")
        detail = "" if loss is None else f", loss {float(loss):.4f}"
        notify(self.progress, self.done / self.epochs, f"epoch {self.done}/{self.epochs}{detail}")


def _check(epochs: int, batch_size: int, temperature: float, alpha: float) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(
            f"`temperature` must be a number > 0. Received: temperature={temperature!r}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be a number in [0, 1]. Received: alpha={alpha!r}")


def recover(
    model: keras.Model,
    *,
    x: Any,
    y: Any = None,
    epochs: int,
    batch_size: int = 64,
    compile_dictionary: Mapping[str, Any] | None = None,
    teacher: keras.Model | None = None,
    distill: bool = False,
    temperature: float = 2.0,
    alpha: float = 0.5,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Trains a (pruned) model briefly, on labels, on a teacher's outputs, or on both.

    The model gets an optimizer of its own, built from the one in `compile_dictionary` (or the
    model's compile config), and ends compiled with `compile_dictionary`'s loss and metrics,
    keeping the optimizer it trained with, so `evaluate` and further `fit` calls work; this
    holds when training is cancelled too.

    With `distill=True` the teacher's outputs on `x`, computed once, are soft targets: for a
    softmax output, the KL divergence between temperature-softened distributions (logits are
    recovered as `log(probabilities)`); for any other output, the mean squared error. With
    labels, the loss is `(1 - alpha) * label_loss + alpha * soft_loss`; without labels
    (`y=None`), the soft loss alone, so unlabeled data can be used.

    Args:
        model: A built model with one output. Trained in place.
        x: Training inputs (an array, or a list/dict of arrays).
        y: Labels, or `None` with `distill=True`.
        epochs: Positive number of epochs.
        batch_size: Rows per gradient step.
        compile_dictionary: Keyword arguments of `model.compile`. Never modified; an optimizer
            instance in it is not used itself, only its config.
        teacher: The unpruned model, needed for `distill=True`.
        distill: Whether to train on the teacher's outputs.
        temperature: Softening temperature (> 0) for softmax outputs.
        alpha: Weight in [0, 1] of the soft loss when labels are given.
        progress: Optional `progress(fraction, message)`, called after each epoch. If it raises,
            training stops before the next epoch and the exception propagates.

    Returns:
        A summary: `epochs` (run), `history` (per-epoch values by name), `final` (last
        values), `distill`, `temperature`, `alpha`, `rows` and `seconds`.

    Raises:
        ValueError: On invalid arguments, nothing to train on (`y=None` without `distill`),
            `distill=True` without a teacher, a multi-output model in distillation, no
            loss to compile with, or `x`/`y` with no rows, the wrong width, different row
            counts, or NaN or infinite values.
        TypeError: If `x` or `y` is a dataset or generator, or not numeric.

    Example:

    >>> small = spectral.prune_percentile(model, 90, compile_kwargs)
    >>> recover(small, x=x_train, y=y_train, epochs=5, teacher=model, distill=True)
    """
    _check(epochs, batch_size, temperature, alpha)
    if y is None and not distill:
        raise ValueError("Recovery needs labels or distillation. Received: y=None, distill=False")
    if distill and teacher is None:
        raise ValueError("Distillation needs the unpruned `teacher`. Received: teacher=None")
    started = time.perf_counter()
    x = model_rows(model, x, "x")
    rows = count_rows(x)
    if y is not None:
        y = label_rows(y, rows, "y")
    user_arguments = _compile_arguments(model, compile_dictionary)
    arguments = dict(user_arguments)
    targets = y
    if distill:
        assert teacher is not None
        if len(model.outputs) != 1 or len(teacher.outputs) != 1:
            raise ValueError(
                "Distillation supports models with one output. "
                f"Received: {len(model.outputs)} model and {len(teacher.outputs)} teacher outputs"
            )
        softmax = _ends_in_softmax(teacher) and _ends_in_softmax(model)
        soft = _predict(teacher, x, rows)
        if softmax:
            soft = _tempered(soft, float(temperature))
        soft = soft.reshape(rows, -1)
        labels = np.zeros((rows, 0), dtype=np.float32)
        label_loss = None
        if y is not None:
            labels = np.asarray(y, dtype=np.float32).reshape(rows, -1)
            label_loss = keras.losses.get(user_arguments.get("loss"))
            if label_loss is None:
                raise ValueError(
                    "Distilling alongside labels needs the label loss in `compile_dictionary`. "
                    "Received: loss=None"
                )
        targets = np.concatenate([labels, soft], axis=1)
        arguments = {
            **user_arguments,
            # Explicitly none: `compile` keeps earlier metrics when given `None`, and metrics
            # would read the packed targets as labels.
            "metrics": [],
            "weighted_metrics": None,
            "loss_weights": None,
            "loss": distillation_loss(
                label_loss,
                labels.shape[1],
                softmax=softmax,
                temperature=float(temperature),
                alpha=float(alpha),
            ),
        }
    model.compile(**arguments)
    callback = _EpochProgress(progress, int(epochs))
    try:
        history = model.fit(
            x,
            targets,
            epochs=int(epochs),
            batch_size=int(batch_size),
            verbose=0,
            callbacks=[callback],
        )
    finally:
        # Cancelled or not, the model ends compiled for the user's loss and metrics, with the
        # optimizer (and its state) it trained with.
        model.compile(**{**user_arguments, "optimizer": model.optimizer})
    values = {name: [float(v) for v in series] for name, series in history.history.items()}
    summary = {
        "epochs": callback.done,
        "history": values,
        "final": {name: series[-1] for name, series in values.items() if series},
        "distill": bool(distill),
        "temperature": float(temperature),
        "alpha": float(alpha),
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    logger.info(
        "Recovery of %s: %d epochs in %.1f s", model.name, callback.done, summary["seconds"]
    )
    return summary
