"""Physical pruning: rebuild a model with removed nodes sliced out of every weight they touch.

Given a `Plan` from `spectral.graph.Planner`, `compact_model` clones the model (nested models
included) and lets each planned layer's `ConsumerRule` decide its clone's config and weights:
smaller Spectral layers, consumers' rows sliced, removed nodes' constants folded into biases,
so the compact model computes exactly what the masked model computes.
"""

from __future__ import annotations

import logging
from typing import Any

import keras

from spectral.keras_graph import graph_of, is_graph_model
from spectral.plan import LayerPlan, Plan
from spectral.rules.base import weights_by_name

logger = logging.getLogger(__name__)


def _copy_weights(original: Any, clone: Any) -> None:
    # Match by name where possible: Keras orders weights trainable-first, and a variable's
    # `trainable` flag may have been changed (e.g. a frozen `base`), so orders can differ.
    names = [v.name for v in original.weights]
    if len(set(names)) == len(names) and sorted(names) == sorted(v.name for v in clone.weights):
        values = weights_by_name(original)
        for variable in clone.weights:
            variable.assign(values[variable.name])
    else:
        clone.set_weights(original.get_weights())


def _transfer(original: Any, clone: Any, plan: LayerPlan | None) -> None:
    rule = None if plan is None or not clone.weights else plan.rule
    values = None if rule is None else rule.slice_weights(original, plan)
    if values is None:
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
            if layer_plan is not None and layer_plan.rule is not None:
                config = layer_plan.rule.clone_config(layer, layer_plan, config)
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
