"""The rule protocol: how a layer type takes part in pruning when nodes feeding it go.

A `ConsumerRule` owns every way one layer type is involved: whether it can take pruned inputs
at all (`supports`), how the kept set and the removed nodes' constants propagate through it
(`propagate`), how its config and weights change (`clone_config`, `slice_weights`), how a
removed node's constant act(0) is folded into its bias (`bias_fold`), and, for layers that are
an affine map of their input, the map reconstruction re-fits (`linear_map`, `held_entries`,
`set_linear_map`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from spectral.layer import to_numpy
from spectral.plan import Features, LayerPlan


@dataclass
class LayerCall:
    """One call of a layer, as a rule sees it while planning.

    Args:
        layer: The layer called.
        inputs: The features of each input tensor.
        input_shapes: The symbolic shape of each input tensor.
        plan: The layer's plan entry (`keep` / `mask` are set for pruned Spectral layers).
        on_conflict: Receives `(features, reason)` for each input a rule cannot carry.
    """

    layer: Any
    inputs: list[Features]
    input_shapes: list[tuple[int | None, ...]]
    plan: LayerPlan
    on_conflict: Callable[[Features, str], None]

    @property
    def rank(self) -> int:
        """Rank of the first input."""
        return len(self.input_shapes[0])

    def feature_axis(self, axis: int) -> bool:
        """Whether `axis` is the last axis of the first input (features)."""
        return axis in (-1, self.rank - 1)

    def conflict(self, reason: str) -> None:
        """Declares that the layer cannot carry its inputs' pruning: their sources get masked."""
        for feat in self.inputs:
            self.on_conflict(feat, reason)


class ConsumerRule:
    """How one layer type behaves when nodes feeding it are removed. Subclass to teach a layer.

    Register an instance with `spectral.register_consumer_rule(layer_class, rule)`. A layer
    whose class has no rule, or whose rule does not `support` a call, makes the Spectral layers
    feeding it masked instead of sliced (with a warning).

    Attributes:
        absorbs: `True` when the layer's output does not depend on which input features were
            removed, because the removal is absorbed into its weights (Dense, Spectral).
            `False` when the layer carries the kept set on to its output (Dropout,
            BatchNormalization, merges, Concatenate).
        inherit: Whether subclasses of the registered class use this rule too. Off by default:
            a subclass may mix features in a way the rule does not know.

    Example:

    >>> class Scale(keras.layers.Layer):  # y = x * scale, one scale per feature
    ...     ...
    >>> spectral.register_consumer_rule(Scale, spectral.FeatureWiseRule())
    """

    absorbs: bool = False
    inherit: bool = False

    def supports(self, call: LayerCall) -> bool:
        """Whether this call can take pruned inputs (e.g. the right axis, a single input)."""
        return True

    def propagate(self, call: LayerCall) -> Features:
        """The features of the layer's output, given its inputs' (`call.inputs`).

        A carrying rule returns the kept set and the output's constants at removed positions;
        an absorbing rule returns `spectral.plan.UNTOUCHED`. Call `call.conflict(reason)` for
        inputs that cannot be carried.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement `propagate`.")

    def clone_config(self, layer: Any, plan: LayerPlan, config: dict[str, Any]) -> dict[str, Any]:
        """The config of the layer's pruned clone (default: unchanged)."""
        return config

    def bias_fold(self, layer: Any, plan: LayerPlan) -> np.ndarray | None:
        """What to add to the layer's bias for the removed inputs' constants (None: nothing)."""
        return None

    def slice_weights(self, layer: Any, plan: LayerPlan) -> dict[str, np.ndarray] | None:
        """The clone's weight values by variable name, or `None` to copy the weights as they are.

        Entries the clone has no variable for are ignored.
        """
        return None

    def linear_map(self, layer: Any) -> tuple[np.ndarray, np.ndarray | None] | None:
        """For reconstruction: `(kernel, bias)` with `pre_activation = x @ kernel + bias`.

        `None` (the default) means the layer is not an affine map reconstruction can re-fit.
        """
        return None

    def held_entries(self, layer: Any) -> np.ndarray:
        """For reconstruction: the kernel entries `set_linear_map` cannot change (a boolean mask).

        Reconstruction holds them at their value and solves the rest of each column given them.
        Default: none (a layer whose linear map is not `None` can take any kernel).
        """
        linear = self.linear_map(layer)
        if linear is None:
            raise NotImplementedError(f"{type(self).__name__} has no linear map to set.")
        return np.zeros(linear[0].shape, dtype=bool)

    def set_linear_map(self, layer: Any, kernel: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """For reconstruction: makes the layer compute `x @ kernel + bias` before activating.

        Returns:
            A boolean array shaped like `kernel`: entries the layer cannot represent, which
            kept their previous value.
        """
        raise NotImplementedError(f"{type(self).__name__} has no linear map to set.")


def weights_by_name(layer: Any) -> dict[str, np.ndarray]:
    """The layer's weight values, keyed by variable name."""
    return {v.name: to_numpy(v) for v in layer.weights}


def fold(feat: Features | None, kernel: np.ndarray) -> np.ndarray | None:
    """Bias change that replaces the removed input rows of `kernel` (None if nothing to fold).

    A removed input feature holds a constant c; its contribution `c @ kernel[rows]` is the same
    for every example, so the consumer's bias can carry it once the rows are gone.
    """
    if feat is None or not feat.pruned:
        return None
    assert feat.const is not None
    rows = feat.removed(kernel.shape[0])
    delta = feat.const[rows].astype(np.float64) @ kernel[rows].astype(np.float64)
    return delta if np.any(delta != 0.0) else None


def apply_to_constant(layer: Any, consts: list[np.ndarray], rank: int) -> np.ndarray:
    """The layer's output (float64, flattened) on constant inputs, one per input tensor."""
    values = [c.reshape((1,) * (rank - 1) + (-1,)).astype(np.float32) for c in consts]
    out = layer(values[0] if len(values) == 1 else values, training=False)
    return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float64).reshape(-1)
