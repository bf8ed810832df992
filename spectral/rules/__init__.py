"""Per-layer-type pruning rules, in one table keyed by layer class.

`rule_for(layer)` answers which `ConsumerRule` handles a layer; the planner
(`spectral.graph`) and compaction (`spectral.compaction`) both ask it, so a layer type's
behaviour lives in its rule alone. `register_consumer_rule` teaches the library a custom layer.
"""

from __future__ import annotations

from typing import Any

import keras

from spectral.layer import Spectral
from spectral.rules.base import ConsumerRule, LayerCall
from spectral.rules.elementwise import (
    ActivationRule,
    BatchNormalizationRule,
    ConcatenateRule,
    FeatureWiseRule,
    MergeRule,
    PassThroughRule,
)
from spectral.rules.linear import DenseRule, LinearRule, SpectralRule, mask_nodes

__all__ = [
    "ActivationRule",
    "BatchNormalizationRule",
    "ConcatenateRule",
    "ConsumerRule",
    "DenseRule",
    "FeatureWiseRule",
    "LayerCall",
    "LinearRule",
    "MergeRule",
    "PassThroughRule",
    "SpectralRule",
    "mask_nodes",
    "register_consumer_rule",
    "registered_rules",
    "rule_for",
    "unregister_consumer_rule",
]

_RULES: dict[type, ConsumerRule] = {}


def register_consumer_rule(layer_class: type, rule: ConsumerRule) -> ConsumerRule | None:
    """Teaches pruning how `layer_class` behaves when nodes feeding it are removed.

    Args:
        layer_class: A `keras.layers.Layer` subclass. The rule applies to exactly this class,
            and to its subclasses only when `rule.inherit` is true.
        rule: A `ConsumerRule` instance (for example `FeatureWiseRule()` for a per-feature
            scale layer, `DenseRule()` for a Dense-like layer with `kernel` and `bias`).

    Returns:
        The rule previously registered for `layer_class`, or `None`.

    Raises:
        TypeError: If `layer_class` is not a Layer subclass or `rule` not a `ConsumerRule`.

    Example:

    >>> spectral.register_consumer_rule(MyScale, spectral.FeatureWiseRule())
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(
            f"`layer_class` must be a keras.layers.Layer subclass. Received: "
            f"layer_class={layer_class!r}"
        )
    if not isinstance(rule, ConsumerRule):
        raise TypeError(f"`rule` must be a ConsumerRule instance. Received: rule={rule!r}")
    previous = _RULES.get(layer_class)
    _RULES[layer_class] = rule
    return previous


def unregister_consumer_rule(layer_class: type) -> ConsumerRule | None:
    """Removes the rule for `layer_class`; returns it, or `None` if there was none."""
    return _RULES.pop(layer_class, None)


def registered_rules() -> dict[type, ConsumerRule]:
    """A copy of the table: layer class -> rule."""
    return dict(_RULES)


def rule_for(layer: Any) -> ConsumerRule | None:
    """The rule for `layer`: its exact class's, else an inheriting rule of a base class."""
    rule = _RULES.get(type(layer))
    if rule is not None:
        return rule
    for base in type(layer).__mro__[1:]:
        rule = _RULES.get(base)
        if rule is not None and rule.inherit:
            return rule
    return None


def _register_builtin_rules() -> None:
    layers = keras.layers
    pass_through = PassThroughRule()
    for cls in (
        layers.Dropout,
        layers.GaussianNoise,
        layers.GaussianDropout,
        layers.AlphaDropout,
        layers.ActivityRegularization,
        layers.ReLU,
        layers.LeakyReLU,
        layers.ELU,
        layers.Identity,
    ):
        register_consumer_rule(cls, pass_through)
    merge = MergeRule()
    for cls in (
        layers.Add,
        layers.Subtract,
        layers.Multiply,
        layers.Average,
        layers.Maximum,
        layers.Minimum,
    ):
        register_consumer_rule(cls, merge)
    register_consumer_rule(layers.Activation, ActivationRule())
    register_consumer_rule(layers.BatchNormalization, BatchNormalizationRule())
    register_consumer_rule(layers.Concatenate, ConcatenateRule())
    register_consumer_rule(layers.Dense, DenseRule())
    register_consumer_rule(Spectral, SpectralRule())


_register_builtin_rules()
