"""Graph analysis for pruning: which features survive where, and which layers can be sliced.

The planner runs an abstract interpretation over a model's layer graph (nested models included):
each tensor carries a `Features` value saying which of its last-axis features survive and what
constant the removed ones hold. Layers that cannot be sliced safely turn the Spectral layers that
feed them into *conflicts*; the caller masks those instead of slicing them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from spectral.layer import Spectral

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

# Exact types only: a subclass may do something across features, so it falls back to masking.
_PASS_THROUGH = (
    keras.layers.Dropout,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Identity,
)
_ELEMENTWISE_MERGES = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
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


def graph_of(model: keras.Model) -> Any:
    """Returns the functional graph behind a Functional or Sequential model.

    Raises:
        ValueError: If the model is subclassed or an unbuilt Sequential.
    """
    if isinstance(model, keras.Sequential):
        # A built Sequential keeps an equivalent Functional over the same layer objects.
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError(
                "The Sequential model must be built (give it an `Input` or call `build`). "
                f"Received: model={model.name}"
            )
        return functional
    if hasattr(model, "_nodes_by_depth") and hasattr(model, "inputs"):
        return model
    raise ValueError(
        "Pruning needs a Sequential or Functional model; subclassed models have no layer "
        f"graph to rewrite. Received: model={model.name} ({type(model).__name__})"
    )


def is_graph_model(layer: Any) -> bool:
    """Whether `layer` is a Sequential or Functional model the planner can walk into."""
    if isinstance(layer, keras.Sequential):
        return True
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth")


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
    """Returns `(path, layer)` for each Spectral layer of `model`, nested models included."""
    return [(p, layer) for p, layer in iter_layers(model) if isinstance(layer, Spectral)]


@dataclass(frozen=True)
class Features:
    """What the planner knows about one tensor's last axis.

    Args:
        kept: Indices of the original features that survive, or `None` when nothing was removed.
        const: Full-length vector; at removed positions, the constant the masked model outputs.
        sources: Ids of the Spectral layers whose pruning this tensor carries.
    """

    kept: np.ndarray | None = None
    const: np.ndarray | None = None
    sources: frozenset[int] = frozenset()

    @property
    def pruned(self) -> bool:
        return self.kept is not None

    def same_as(self, other: Features, *, with_const: bool = False) -> bool:
        """Whether both carry the same kept set (and, optionally, the same removed constants)."""
        if self.kept is None or other.kept is None:
            return self.kept is None and other.kept is None
        if not np.array_equal(self.kept, other.kept):
            return False
        if not with_const or self.const is None or other.const is None:
            return not with_const or self.const is other.const
        return bool(np.array_equal(self.const, other.const))


UNTOUCHED = Features()


@dataclass
class LayerPlan:
    """How one layer changes: its input features, and (Spectral) which output nodes it keeps."""

    inputs: list[Features]
    keep: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass
class Plan:
    """Result of one planner run."""

    layers: dict[int, LayerPlan] = field(default_factory=dict)
    conflicts: dict[int, str] = field(default_factory=dict)
    output_sources: frozenset[int] = frozenset()


def _union(features: list[Features]) -> frozenset[int]:
    return frozenset().union(*(f.sources for f in features))


def _apply_numpy(layer: Any, values: Any) -> np.ndarray:
    out = layer(values, training=False)
    return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float64)


def _const_input(const: np.ndarray, rank: int) -> np.ndarray:
    return const.reshape((1,) * (rank - 1) + (-1,)).astype(np.float32)


def spectral_rest_value(layer: Spectral) -> np.ndarray:
    """What each node of `layer` outputs once its weights, eigenvalue and bias are zeroed."""
    zeros = np.zeros((1, layer.units), dtype=np.float32)
    return np.asarray(keras.ops.convert_to_numpy(layer.activation(zeros)), dtype=np.float64)[0]


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
        # Same traversal order as Keras's own Function._run_through_graph.
        values: dict[int, Features] = {id(x): f for x, f in zip(graph.inputs, inputs, strict=True)}
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if any(id(x) not in values for x in node.input_tensors):
                    continue
                ins = [values[id(x)] for x in node.input_tensors]
                outs = self._visit(node, ins)
                for x, feat in zip(node.outputs, outs, strict=False):
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

    def _visit(self, node: Any, ins: list[Features]) -> list[Features]:
        layer = node.operation
        n_out = len(node.outputs)
        if is_graph_model(layer):
            self._record(layer, LayerPlan(inputs=ins), ins)
            return self._walk(graph_of(layer), ins)
        if isinstance(layer, Spectral):
            return [self._visit_spectral(layer, ins)]
        pruned_in = [f for f in ins if f.pruned]
        rank = len(node.input_tensors[0].shape)
        handler = self._handler(layer, ins, rank)
        if not pruned_in:
            self._record(layer, LayerPlan(inputs=ins), ins)
            if handler is None or handler == self._visit_consumer:
                return [UNTOUCHED] * n_out
            # Nothing removed here, but remember whose nodes these features are, so that a
            # Spectral layer reaching a model output through pass-through layers is found.
            return [Features(sources=_union(ins))] * n_out
        if handler is None:
            for feat in pruned_in:
                self._conflict(feat, f"consumer '{layer.name}' ({type(layer).__name__})")
            return [UNTOUCHED] * n_out
        if not self._record(layer, LayerPlan(inputs=ins), ins):
            return [UNTOUCHED] * n_out
        return [handler(layer, node, ins, rank)]

    def _handler(
        self, layer: Any, ins: list[Features], rank: int
    ) -> Callable[..., Features] | None:
        """The rule for a layer that receives pruned features, or None if it is unsafe."""
        if type(layer) is keras.layers.Dense and len(ins) == 1:
            return self._visit_consumer
        if type(layer) in _PASS_THROUGH and len(ins) == 1:
            return self._visit_elementwise
        if (
            type(layer) is keras.layers.Activation
            and len(ins) == 1
            and is_elementwise_activation(layer.activation)
        ):
            return self._visit_elementwise
        if (
            type(layer) is keras.layers.BatchNormalization
            and len(ins) == 1
            and layer.axis in (-1, rank - 1)
        ):
            return self._visit_elementwise
        if type(layer) in _ELEMENTWISE_MERGES:
            return self._visit_merge
        if type(layer) is keras.layers.Concatenate and layer.axis in (-1, rank - 1):
            return self._visit_concat
        return None

    def _visit_spectral(self, layer: Spectral, ins: list[Features]) -> Features:
        keep = self.keep.get(id(layer))
        plan = LayerPlan(inputs=ins, keep=keep, mask=self.mask.get(id(layer)))
        self._record(layer, plan, ins)
        if keep is None:
            return UNTOUCHED
        return Features(kept=keep, const=spectral_rest_value(layer), sources=frozenset({id(layer)}))

    def _visit_consumer(self, layer: Any, node: Any, ins: list[Features], rank: int) -> Features:
        return UNTOUCHED

    def _visit_elementwise(self, layer: Any, node: Any, ins: list[Features], rank: int) -> Features:
        feat = ins[0]
        assert feat.const is not None
        const = _apply_numpy(layer, _const_input(feat.const, rank)).reshape(-1)
        return Features(kept=feat.kept, const=const, sources=feat.sources)

    def _visit_merge(self, layer: Any, node: Any, ins: list[Features], rank: int) -> Features:
        first = ins[0]
        if not all(first.same_as(f) for f in ins[1:]):
            for feat in ins:
                self._conflict(feat, f"merge '{layer.name}' joins different node sets")
            return Features(sources=_union(ins))
        consts = [_const_input(f.const, rank) for f in ins if f.const is not None]
        const = _apply_numpy(layer, consts).reshape(-1)
        return Features(kept=first.kept, const=const, sources=_union(ins))

    def _visit_concat(self, layer: Any, node: Any, ins: list[Features], rank: int) -> Features:
        kept_parts, const_parts = [], []
        offset = 0
        for feat, tensor in zip(ins, node.input_tensors, strict=True):
            dim = int(tensor.shape[-1])
            if feat.pruned:
                assert feat.kept is not None and feat.const is not None
                kept_parts.append(feat.kept + offset)
                const_parts.append(feat.const)
            else:
                kept_parts.append(np.arange(dim) + offset)
                const_parts.append(np.zeros(dim))
            offset += dim
        return Features(
            kept=np.concatenate(kept_parts), const=np.concatenate(const_parts), sources=_union(ins)
        )
