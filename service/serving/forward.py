"""The folded forward: a model's layers as plain numpy steps, computed once at load.

Each Spectral layer becomes its direct-space kernel ``base * (diag_start - diag_end)``; Dense
keeps its kernel; BatchNormalization folds into a scale and a shift; inference-time no-ops
(Dropout and the noise layers) disappear. A request then costs a few numpy matmuls and no Keras
dispatch. A model with anything else (a merge layer, several inputs, an unknown activation) is
not folded: `fold` answers None and the caller serves it through Keras.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

Step = Callable[[np.ndarray], np.ndarray]

# Layers that do nothing at inference.
_IDENTITY = frozenset(
    {
        "Dropout",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "Identity",
        "InputLayer",
    }
)

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

try:  # Exact GELU needs erf; without scipy a GELU model is served through Keras instead.
    from scipy.special import erf
except ImportError:  # pragma: no cover
    erf = None


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so that neither branch overflows exp.
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def _gelu_exact(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(x.dtype)
    return out


def _elu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


_ACTIVATIONS: dict[str, Step] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "softmax": _softmax,
    "elu": _elu,
    "softplus": lambda x: np.logaddexp(x, 0).astype(x.dtype),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "exponential": np.exp,
    "relu6": lambda x: np.clip(x, 0, 6),
}


if erf is not None:
    _ACTIVATIONS["gelu"] = _gelu_exact


def _activation(config_value: Any) -> Step | None:
    """The numpy step of a serialized activation (None: not foldable)."""
    if config_value is None:
        return _ACTIVATIONS["linear"]
    name = config_value
    if isinstance(config_value, dict):
        name = config_value.get("config", {}).get("name") or config_value.get("class_name")
    if not isinstance(name, str):
        return None
    return _ACTIVATIONS.get(name)


def _layer_step(layer: Any) -> Step | None | bool:
    """The layer as a numpy step; True: an identity; None: not foldable."""
    kind = type(layer).__name__
    config = layer.get_config()
    if kind in _IDENTITY:
        return True
    if kind in ("Dense", "Spectral"):
        if kind == "Dense":
            kernel = np.asarray(layer.kernel.numpy(), dtype=np.float32)
            if getattr(layer, "lora_enabled", False):
                return None
        else:
            kernel = np.asarray(layer.kernel.numpy(), dtype=np.float32)
        if kernel.ndim != 2:
            return None
        bias = (
            np.asarray(layer.bias.numpy(), dtype=np.float32)
            if getattr(layer, "bias", None) is not None
            else None
        )
        act = _activation(config.get("activation"))
        if act is None:
            return None

        def dense(x: np.ndarray, k: np.ndarray = kernel, b: Any = bias, f: Step = act) -> Any:
            y = x @ k
            if b is not None:
                y += b
            return f(y)

        return dense
    if kind == "Activation":
        return _activation(config.get("activation"))
    if kind == "ReLU":
        if (
            config.get("max_value") is None
            and not config.get("negative_slope")
            and not (config.get("threshold"))
        ):
            return _ACTIVATIONS["relu"]
        return None
    if kind == "LeakyReLU":
        slope = float(config.get("negative_slope", config.get("alpha", 0.3)))
        return lambda x: np.where(x >= 0, x, slope * x).astype(x.dtype)
    if kind == "ELU":
        alpha = float(config.get("alpha", 1.0))
        return lambda x: _elu(x, alpha)
    if kind == "Softmax":
        return _softmax if config.get("axis", -1) in (-1, [-1]) else None
    if kind == "BatchNormalization":
        axis = config.get("axis", -1)
        if axis not in (-1, [-1], 1, [1]):
            return None
        gamma = layer.gamma.numpy() if layer.gamma is not None else 1.0
        beta = layer.beta.numpy() if layer.beta is not None else 0.0
        scale = (gamma / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)).astype(np.float32)
        shift = (beta - layer.moving_mean.numpy() * scale).astype(np.float32)
        return lambda x: x * scale + shift
    return None


class FoldedForward:
    """A chain of numpy steps with the model's output; ``macs`` is the multiply-adds per row."""

    def __init__(self, steps: list[Step], macs: int) -> None:
        self.steps = steps
        self.macs = macs

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = np.ascontiguousarray(x, dtype=np.float32)
        for step in self.steps:
            y = step(y)
        return np.asarray(y, dtype=np.float32)


def fold(model: Any) -> FoldedForward | None:
    """The model as a `FoldedForward`, or None when it is not a plain chain of foldable layers
    with one 2-D float input and one output."""
    inputs = getattr(model, "inputs", None) or []
    outputs = getattr(model, "outputs", None) or []
    if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 2:
        return None
    if str(getattr(inputs[0], "dtype", "float32")) != "float32":
        return None
    layers = list(model.layers)
    # A Sequential model is a chain by definition. Its layers cannot be checked through their
    # inbound nodes: a loaded Sequential's inner layers hold 2 or 3 (it is built more than
    # once while loading). Other models: every layer after the first has exactly one inbound
    # layer, the one before it.
    chained = layers[1:] if type(model).__name__ != "Sequential" else []
    for previous, layer in zip(layers, chained, strict=False):
        nodes = getattr(layer, "_inbound_nodes", [])
        if len(nodes) != 1:
            return None
        parents = [t._keras_history[0] for t in nodes[0].input_tensors]
        if parents != [previous] and not (
            parents == [] or (type(previous).__name__ == "InputLayer" and len(parents) == 1)
        ):
            return None
    if layers and model.outputs[0]._keras_history[0] is not layers[-1]:
        return None
    steps: list[Step] = []
    macs = 0
    for layer in layers:
        if getattr(layer, "dtype", "float32") not in ("float32", None):
            return None
        step = _layer_step(layer)
        if step is None:
            return None
        if step is True:
            continue
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            macs += int(np.prod(kernel.shape))
        steps.append(step)  # type: ignore[arg-type]
    return FoldedForward(steps, max(macs, 1))
