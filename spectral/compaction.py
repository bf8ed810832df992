"""Physical pruning: rebuild a model with removed nodes sliced out of every weight they touch.

Given a `Plan` from `spectral.graph.Planner`, `compact_model` clones the model (nested models
included) with smaller Spectral layers, slices the rows of every consumer (Spectral, Dense,
BatchNormalization), and folds the constant output of removed nodes into the consumer's bias, so
the compact model computes exactly what the masked model computes.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

from spectral.graph import Features, LayerPlan, Plan, graph_of, is_graph_model
from spectral.layer import Spectral, to_numpy

logger = logging.getLogger(__name__)


def _weights_by_name(layer: Any) -> dict[str, np.ndarray]:
    return {v.name: to_numpy(v) for v in layer.weights}


def _removed_rows(feat: Features, dim: int) -> np.ndarray:
    assert feat.kept is not None
    removed = np.ones(dim, dtype=bool)
    removed[feat.kept] = False
    return np.flatnonzero(removed)


def _fold(feat: Features | None, kernel: np.ndarray) -> np.ndarray | None:
    """Bias change that replaces the removed input rows of `kernel` (None if nothing to fold)."""
    if feat is None or not feat.pruned:
        return None
    assert feat.const is not None
    rows = _removed_rows(feat, kernel.shape[0])
    fold = feat.const[rows].astype(np.float64) @ kernel[rows].astype(np.float64)
    return fold if np.any(fold != 0.0) else None


def needs_bias(layer: Any, plan: LayerPlan | None) -> bool:
    """Whether folding removed inputs into `layer` needs a bias the layer lacks."""
    if plan is None or not plan.inputs or getattr(layer, "use_bias", True):
        return False
    if not (isinstance(layer, Spectral) or type(layer) is keras.layers.Dense):
        return False
    return _fold(plan.inputs[0], to_numpy(layer.kernel)) is not None


def mask_nodes(
    base: np.ndarray, diag_end: np.ndarray, bias: np.ndarray | None, kept: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Copies of a Spectral layer's weights with every node outside `kept` masked.

    A masked node has its incoming `base` column, its eigenvalue and its bias set to zero, so
    it outputs the constant act(0). This is the one definition of masking; the masked model
    that compaction must reproduce, and the masked fallback inside compaction, both use it.
    """
    zero = np.setdiff1d(np.arange(base.shape[1]), kept)
    base, diag_end = base.copy(), diag_end.copy()
    base[:, zero] = 0.0
    diag_end[:, zero] = 0.0
    if bias is not None:
        bias = bias.copy()
        bias[zero] = 0.0
    return base, diag_end, bias


def _spectral_weights(layer: Spectral, plan: LayerPlan, new_use_bias: bool) -> dict[str, Any]:
    w = _weights_by_name(layer)
    base, diag_start, diag_end = w["base"], w["diag_start"], w["diag_end"]
    bias = w.get("bias", np.zeros(layer.units, dtype=base.dtype))
    feat = plan.inputs[0] if plan.inputs else None
    fold = _fold(feat, base * (diag_start - diag_end))
    if fold is not None:
        bias = (bias.astype(np.float64) + fold).astype(base.dtype)
    if feat is not None and feat.kept is not None:
        base, diag_start = base[feat.kept], diag_start[feat.kept]
    if plan.mask is not None:
        base, diag_end, masked_bias = mask_nodes(base, diag_end, bias, plan.mask)
        assert masked_bias is not None
        bias = masked_bias
    if plan.keep is not None:
        base, diag_end, bias = base[:, plan.keep], diag_end[:, plan.keep], bias[plan.keep]
    out = {"base": base, "diag_start": diag_start, "diag_end": diag_end}
    if new_use_bias:
        out["bias"] = bias
    return out


def _dense_weights(layer: Any, plan: LayerPlan, new_use_bias: bool) -> dict[str, Any]:
    w = _weights_by_name(layer)
    kernel = w["kernel"]
    bias = w.get("bias", np.zeros(kernel.shape[1], dtype=kernel.dtype))
    feat = plan.inputs[0]
    fold = _fold(feat, kernel)
    if fold is not None:
        bias = (bias.astype(np.float64) + fold).astype(kernel.dtype)
    if feat.kept is not None:
        kernel = kernel[feat.kept]
    out = {"kernel": kernel}
    if new_use_bias:
        out["bias"] = bias
    return out


def _batchnorm_weights(layer: Any, plan: LayerPlan) -> dict[str, Any]:
    kept = plan.inputs[0].kept
    w = _weights_by_name(layer)
    return {name: (value if kept is None else value[kept]) for name, value in w.items()}


def _copy_weights(original: Any, clone: Any) -> None:
    # Match by name where possible: Keras orders weights trainable-first, and a variable's
    # `trainable` flag may have been changed (e.g. a frozen `base`), so orders can differ.
    names = [v.name for v in original.weights]
    if len(set(names)) == len(names) and sorted(names) == sorted(v.name for v in clone.weights):
        values = _weights_by_name(original)
        for variable in clone.weights:
            variable.assign(values[variable.name])
    else:
        clone.set_weights(original.get_weights())


def _transfer(original: Any, clone: Any, plan: LayerPlan | None) -> None:
    if plan is None or not clone.weights:
        _copy_weights(original, clone)
        return
    new_use_bias = bool(getattr(clone, "use_bias", False))
    if isinstance(original, Spectral):
        values = _spectral_weights(original, plan, new_use_bias)
    elif type(original) is keras.layers.Dense and plan.inputs and plan.inputs[0].pruned:
        values = _dense_weights(original, plan, new_use_bias)
    elif type(original) is keras.layers.BatchNormalization and plan.inputs[0].pruned:
        values = _batchnorm_weights(original, plan)
    else:
        _copy_weights(original, clone)
        return
    for variable in clone.weights:
        variable.assign(values[variable.name])


def _nested_inputs(model: keras.Model, plan: LayerPlan | None) -> Any:
    """New input tensors for a nested model whose inputs lost features (None if unchanged)."""
    if plan is None or not any(f.pruned for f in plan.inputs):
        return None
    tensors = []
    for tensor, feat in zip(graph_of(model).inputs, plan.inputs, strict=True):
        shape = tuple(tensor.shape)
        if feat.kept is not None:
            shape = (*shape[:-1], len(feat.kept))
        tensors.append(keras.Input(batch_shape=shape, dtype=tensor.dtype))
    return tensors[0] if len(tensors) == 1 else tensors


def compact_model(model: keras.Model, plan: Plan) -> keras.Model:
    """Builds the pruned model described by `plan`; `model` itself is left untouched.

    Args:
        model: A Sequential or Functional model.
        plan: The planner's result for the chosen kept nodes (without conflicts).

    Returns:
        A new, uncompiled model whose Spectral layers have `len(keep)` units.
    """
    pairs: list[tuple[Any, Any]] = []
    cache: dict[int, Any] = {}

    def clone_layer(layer: Any) -> Any:
        if id(layer) in cache:  # a shared layer stays shared
            return cache[id(layer)]
        layer_plan = plan.layers.get(id(layer))
        if is_graph_model(layer):
            clone = keras.models.clone_model(
                layer,
                input_tensors=_nested_inputs(layer, layer_plan),
                clone_function=clone_layer,
            )
        else:
            config = layer.get_config()
            if (
                isinstance(layer, Spectral)
                and layer_plan is not None
                and layer_plan.keep is not None
            ):
                config["units"] = len(layer_plan.keep)
            if needs_bias(layer, layer_plan):
                config["use_bias"] = True
            clone = layer.__class__.from_config(config)
            pairs.append((layer, clone))
        cache[id(layer)] = clone
        return clone

    new_model = keras.models.clone_model(model, clone_function=clone_layer)
    logger.debug("Compacted %s: %d layers rebuilt", model.name, len(pairs))
    for original, clone in pairs:
        _transfer(original, clone, plan.layers.get(id(original)))
    return new_model


def copy_model(model: keras.Model) -> keras.Model:
    """Returns an uncompiled copy of `model` with the same weights (nested models cloned too)."""
    return compact_model(model, Plan())
