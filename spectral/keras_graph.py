"""The one module that reads Keras internals: the layer graph behind Sequential and Functional.

Pruning has to walk a model's graph call by call (which layer is called on which tensors, in
which order, nested models included), and Keras 3 has no public API for that. Everything the
library needs from Keras's private structures is read here, and only here:

- `Sequential._functional`: the Functional a built Sequential runs on;
- `Functional._nodes_by_depth`: the graph's call nodes, grouped by depth;
- on a node: `operation`, `is_input`, `input_tensors` and `outputs`.

Supported Keras: `SUPPORTED_KERAS` (>=3.6, <4). Every internal above exists, with the same
meaning, from Keras 3.6 through 3.15 (tested on 3.6.0 and 3.15.1). The first use checks that
the installed Keras exposes them (`ensure_supported`) and raises a `RuntimeError` naming the
supported range otherwise, instead of failing halfway through a pruning run.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras

SUPPORTED_KERAS = ">=3.6,<4"
_MINIMUM = (3, 6)
_BELOW = (4, 0)

# Attribute -> what it is, for each internal read through this module (see the docstring).
SEQUENTIAL_INTERNALS = {"_functional": "the Functional a built Sequential runs on"}
FUNCTIONAL_INTERNALS = {"_nodes_by_depth": "the graph's call nodes, grouped by depth"}
NODE_INTERNALS = {
    "operation": "the layer a node calls",
    "is_input": "whether a node is a graph input",
    "input_tensors": "the tensors a node is called on",
    "outputs": "the tensors a node returns",
}


def keras_version() -> tuple[int, ...]:
    """The installed Keras version as a tuple of ints (`(3, 15, 1)`)."""
    parts = []
    for part in keras.version().split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _probe() -> tuple[Any, Any]:
    # Every name is explicit so that building the probe takes no automatic layer or model name
    # (which would shift the names Keras gives the caller's next layers).
    inputs = keras.Input((2,), name="spectral_probe_input")
    outputs = keras.layers.Identity(name="spectral_probe_identity")(inputs)
    functional = keras.Model(inputs, outputs, name="spectral_probe_functional")
    sequential = keras.Sequential(name="spectral_probe_sequential")
    return functional, sequential


def missing_internals(functional: Any = None, sequential: Any = None) -> list[str]:
    """Names of the Keras internals this module reads that the given models lack.

    Args:
        functional: A Functional model with at least one layer call; defaults to a probe.
        sequential: A Sequential model; defaults to a probe.

    Returns:
        `"Class.attribute"` for each missing internal; empty when all are there.
    """
    if functional is None or sequential is None:
        functional, sequential = _probe()
    missing = [f"Sequential.{n}" for n in SEQUENTIAL_INTERNALS if not hasattr(sequential, n)]
    missing += [f"Functional.{n}" for n in FUNCTIONAL_INTERNALS if not hasattr(functional, n)]
    by_depth = getattr(functional, "_nodes_by_depth", None)
    nodes = [n for group in by_depth.values() for n in group] if isinstance(by_depth, dict) else []
    if not nodes:
        missing += [f"Node.{n}" for n in NODE_INTERNALS]
    else:
        missing += [
            f"Node.{n}" for n in NODE_INTERNALS if not all(hasattr(node, n) for node in nodes)
        ]
    return missing


@functools.cache
def ensure_supported() -> None:
    """Checks, once per process, that the installed Keras has what this module reads.

    Raises:
        RuntimeError: If the Keras version is outside `SUPPORTED_KERAS` or an internal is
            missing; the message names the supported range and what is missing.
    """
    version = keras_version()
    problems = []
    if not _MINIMUM <= version < _BELOW:
        problems.append("version outside the supported range")
    missing = missing_internals()
    if missing:
        problems.append(f"missing internals {missing}")
    if problems:
        raise RuntimeError(
            f"spectral supports Keras {SUPPORTED_KERAS}; the installed Keras "
            f"{keras.version()} does not fit ({'; '.join(problems)}). Install a supported "
            f"Keras, e.g. `pip install 'keras{SUPPORTED_KERAS}'`."
        )


def is_graph_model(layer: Any) -> bool:
    """Whether `layer` is a Sequential or Functional model the planner can walk into."""
    if isinstance(layer, keras.Sequential):
        return True
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth")


def graph_of(model: keras.Model) -> Any:
    """Returns the functional graph behind a Functional or Sequential model.

    Raises:
        ValueError: If the model is subclassed or an unbuilt Sequential.
        RuntimeError: If the installed Keras is not supported (see `ensure_supported`).
    """
    ensure_supported()
    if isinstance(model, keras.Sequential):
        # A built Sequential keeps an equivalent Functional over the same layer objects.
        functional = model._functional
        if functional is None:
            raise ValueError(
                "The Sequential model must be built (give it an `Input` or call `build`). "
                f"Received: model={model.name}"
            )
        return functional
    if is_graph_model(model) and hasattr(model, "inputs"):
        return model
    raise ValueError(
        "Pruning needs a Sequential or Functional model; subclassed models have no layer "
        f"graph to rewrite. Received: model={model.name} ({type(model).__name__})"
    )


@dataclass(frozen=True)
class Call:
    """One call of a layer in a graph: the layer and the symbolic tensors in and out."""

    layer: Any
    inputs: list[Any]
    outputs: list[Any]


def calls(graph: Any) -> Iterator[Call]:
    """Yields every layer call of `graph` (from `graph_of`) in an order that respects its inputs.

    The order is Keras's own (`Function._run_through_graph`): deepest nodes first.
    """
    by_depth = graph._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            yield Call(layer=node.operation, inputs=list(node.input_tensors), outputs=node.outputs)
