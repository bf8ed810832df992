"""Graph analysis for pruning: which features survive where, and which layers can be sliced.

The planner runs an abstract interpretation over a model's layer graph (nested models included):
each tensor carries a `Features` value saying which of its last-axis features survive and what
constant the removed ones hold. What each layer does with them is its `ConsumerRule`'s business
(`spectral.rules`). Layers without a rule that supports the call turn the Spectral layers that
feed them into *conflicts*; the caller masks those instead of slicing them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from spectral.keras_graph import Call, calls, graph_of, is_graph_model
from spectral.layer import Spectral
from spectral.plan import UNTOUCHED, Features, LayerPlan, Plan, union_sources
from spectral.rules import LayerCall, rule_for

__all__ = [
    "Planner",
    "graph_of",
    "is_graph_model",
    "iter_layers",
    "spectral_layers",
]


def iter_layers(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    """Yields `(path, layer)` for every leaf layer, walking into nested models.

    Paths join the names of enclosing nested models with `/`, e.g. `"encoder/spectral_1"`.
    """
    seen: set[int] = set()
    for layer in model.layers:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        path = f"{prefix}{layer.name}"
        if is_graph_model(layer):
            yield from iter_layers(layer, prefix=f"{path}/")
        else:
            yield path, layer


def spectral_layers(model: keras.Model) -> list[tuple[str, Spectral]]:
    """Returns `(path, layer)` for each Spectral layer of `model`, nested models included.

    Paths join the names of enclosing nested models with `/`, e.g. `"encoder/spectral_1"`.

    Example:

    >>> [(path, layer.units) for path, layer in spectral.spectral_layers(model)]
    [('spectral', 256), ('spectral_1', 128)]
    """
    return [(p, layer) for p, layer in iter_layers(model) if isinstance(layer, Spectral)]


class Planner:
    """Propagates `Features` through a model for a given choice of kept nodes.

    Args:
        model: The model to analyse.
        keep: Spectral layer id -> kept output-node indices, for layers that are sliced.
        mask: Spectral layer id -> kept output-node indices, for layers that are only masked.
    """

    def __init__(
        self,
        model: keras.Model,
        keep: dict[int, np.ndarray],
        mask: dict[int, np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.keep = keep
        self.mask = mask or {}
        self.plan = Plan()

    def run(self) -> Plan:
        graph = graph_of(self.model)
        outputs = self._walk(graph, [UNTOUCHED] * len(graph.inputs))
        sources: set[int] = set()
        for feat in outputs:
            sources |= feat.sources
            if feat.pruned:
                self._conflict(feat, f"model output of '{self.model.name}'")
        self.plan.output_sources = frozenset(sources)
        return self.plan

    def _conflict(self, feat: Features, reason: str) -> None:
        for source in feat.sources:
            self.plan.conflicts.setdefault(source, reason)

    def _walk(self, graph: Any, inputs: list[Features]) -> list[Features]:
        values: dict[int, Features] = {id(x): f for x, f in zip(graph.inputs, inputs, strict=True)}
        for call in calls(graph):
            if any(id(x) not in values for x in call.inputs):
                continue
            outs = self._visit(call, [values[id(x)] for x in call.inputs])
            for x, feat in zip(call.outputs, outs, strict=False):
                values[id(x)] = feat
        return [values.get(id(x), UNTOUCHED) for x in graph.outputs]

    def _record(self, layer: Any, plan: LayerPlan, ins: list[Features]) -> bool:
        previous = self.plan.layers.get(id(layer))
        if previous is not None:
            same = len(previous.inputs) == len(plan.inputs) and all(
                a.same_as(b, with_const=True)
                for a, b in zip(previous.inputs, plan.inputs, strict=True)
            )
            if not same:
                for feat in [*ins, *previous.inputs]:
                    self._conflict(feat, f"shared layer '{layer.name}' sees different features")
                return False
            return True
        self.plan.layers[id(layer)] = plan
        return True

    def _visit(self, call: Call, ins: list[Features]) -> list[Features]:
        layer = call.layer
        n_out = len(call.outputs)
        if is_graph_model(layer):
            self._record(layer, LayerPlan(inputs=ins, layer=layer), ins)
            return self._walk(graph_of(layer), ins)
        plan = LayerPlan(
            inputs=ins,
            keep=self.keep.get(id(layer)),
            mask=self.mask.get(id(layer)),
            layer=layer,
            rule=rule_for(layer),
        )
        shapes = [tuple(x.shape) for x in call.inputs]
        layer_call = LayerCall(layer, ins, shapes, plan, self._conflict)
        if plan.rule is not None and not plan.rule.supports(layer_call):
            plan.rule = None
        rule = plan.rule
        if rule is not None and rule.absorbs:
            # The removal ends here (in the layer's weights); a Spectral layer may start a new one.
            self._record(layer, plan, ins)
            return [rule.propagate(layer_call)] * n_out
        if not any(f.pruned for f in ins):
            self._record(layer, plan, ins)
            if rule is None:
                return [UNTOUCHED] * n_out
            # Nothing removed here, but remember whose nodes these features are, so that a
            # Spectral layer reaching a model output through pass-through layers is found.
            return [Features(sources=union_sources(ins))] * n_out
        if rule is None:
            for feat in ins:
                if feat.pruned:
                    self._conflict(feat, f"consumer '{layer.name}' ({type(layer).__name__})")
            return [UNTOUCHED] * n_out
        if not self._record(layer, plan, ins):
            return [UNTOUCHED] * n_out
        return [rule.propagate(layer_call)]
