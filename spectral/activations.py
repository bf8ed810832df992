"""Which activations act feature by feature, and what a removed node outputs.

A removed node of a layer with an elementwise activation outputs the constant act(0); pruning
folds that constant into the consumer instead of changing the network's function. Activations
that mix features (softmax) have no such constant, so their layers are never pruned.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

# Activations applied feature by feature: a removed node of such a layer outputs act(0).
ELEMENTWISE_ACTIVATIONS = frozenset(
    {
        "linear",
        "relu",
        "relu6",
        "sigmoid",
        "tanh",
        "elu",
        "selu",
        "softplus",
        "softsign",
        "silu",
        "swish",
        "gelu",
        "exponential",
        "hard_sigmoid",
        "hard_silu",
        "hard_swish",
        "leaky_relu",
        "mish",
        "log_sigmoid",
        "celu",
        "sparse_plus",
        "squareplus",
        "tanh_shrink",
        "hard_tanh",
        "soft_shrink",
        "hard_shrink",
        "sparse_sigmoid",
    }
)


def activation_name(activation: Any) -> str | None:
    """Returns the registered name of an activation function, or `None` if it has none."""
    try:
        name = keras.activations.serialize(activation)
    except (ValueError, TypeError, OSError):
        # Keras cannot serialize some callables (a lambda whose source is unavailable).
        return None
    return name if isinstance(name, str) else None


def is_elementwise_activation(activation: Any) -> bool:
    """Whether `activation` acts on each feature independently."""
    return activation_name(activation) in ELEMENTWISE_ACTIVATIONS


def rest_value(activation: Any, units: int) -> np.ndarray:
    """What each of `units` nodes outputs once its pre-activation is zero: act(0), float64."""
    zeros = np.zeros((1, units), dtype=np.float32)
    return np.asarray(keras.ops.convert_to_numpy(activation(zeros)), dtype=np.float64)[0]
