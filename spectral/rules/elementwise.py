"""Rules for layers that carry the kept set on: pass-through, per-feature, merges, concatenation.

None of these mixes features, so a removed node stays a constant on its way through; the rules
only compute that constant and, for per-feature weights, slice them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spectral.activations import is_elementwise_activation
from spectral.plan import Features, LayerPlan, union_sources
from spectral.rules.base import ConsumerRule, LayerCall, apply_to_constant, weights_by_name


class PassThroughRule(ConsumerRule):
    """A single-input layer that acts on each feature independently and has no weights.

    Dropout, noise, ReLU and the like: removed nodes stay removed, their constants pass through
    the layer (as at inference).
    """

    def supports(self, call: LayerCall) -> bool:
        return len(call.inputs) == 1

    def propagate(self, call: LayerCall) -> Features:
        feat = call.inputs[0]
        assert feat.const is not None
        const = apply_to_constant(call.layer, [feat.const], call.rank)
        return Features(kept=feat.kept, const=const, sources=feat.sources)


class ActivationRule(PassThroughRule):
    """`Activation` layers whose function is elementwise (softmax is not)."""

    def supports(self, call: LayerCall) -> bool:
        return super().supports(call) and is_elementwise_activation(call.layer.activation)


class FeatureWiseRule(PassThroughRule):
    """A single-input layer with one weight entry per feature along the last axis.

    Its output on the kept features is unchanged once every weight is sliced along its last axis
    to the kept features; use it for custom per-feature scale or shift layers.
    """

    def slice_weights(self, layer: Any, plan: LayerPlan) -> dict[str, np.ndarray] | None:
        kept = plan.inputs[0].kept
        if kept is None:
            return None
        return {name: value[..., kept] for name, value in weights_by_name(layer).items()}


class BatchNormalizationRule(FeatureWiseRule):
    """`BatchNormalization` over the feature axis (its statistics are per feature)."""

    def supports(self, call: LayerCall) -> bool:
        return super().supports(call) and call.feature_axis(call.layer.axis)


class MergeRule(ConsumerRule):
    """Elementwise merges (Add, Subtract, Multiply, Average, Maximum, Minimum).

    Every input must keep the same features; otherwise a kept feature of one branch would meet
    a removed one of another, so the branches are masked instead.
    """

    def propagate(self, call: LayerCall) -> Features:
        first = call.inputs[0]
        if not all(first.same_as(f) for f in call.inputs[1:]):
            call.conflict(f"merge '{call.layer.name}' joins different node sets")
            return Features(sources=union_sources(call.inputs))
        consts = [f.const for f in call.inputs if f.const is not None]
        const = apply_to_constant(call.layer, consts, call.rank)
        return Features(kept=first.kept, const=const, sources=union_sources(call.inputs))


class ConcatenateRule(ConsumerRule):
    """`Concatenate` on the feature axis: the kept sets line up side by side."""

    def supports(self, call: LayerCall) -> bool:
        return call.feature_axis(call.layer.axis)

    def propagate(self, call: LayerCall) -> Features:
        kept_parts, const_parts = [], []
        offset = 0
        for feat, shape in zip(call.inputs, call.input_shapes, strict=True):
            dim = int(shape[-1])  # type: ignore[arg-type]
            if feat.pruned:
                assert feat.kept is not None and feat.const is not None
                kept_parts.append(feat.kept + offset)
                const_parts.append(feat.const)
            else:
                kept_parts.append(np.arange(dim) + offset)
                const_parts.append(np.zeros(dim))
            offset += dim
        return Features(
            kept=np.concatenate(kept_parts),
            const=np.concatenate(const_parts),
            sources=union_sources(call.inputs),
        )
