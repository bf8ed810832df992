"""The Keras internals module: every internal it reads exists on the installed Keras, an
unsupported Keras fails with a clear message, and no other module reads Keras internals."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import keras
import pytest

from spectral import Spectral, keras_graph
from spectral.keras_graph import (
    FUNCTIONAL_INTERNALS,
    NODE_INTERNALS,
    SEQUENTIAL_INTERNALS,
    calls,
    ensure_supported,
    graph_of,
    missing_internals,
)

SPECTRAL = Path(keras_graph.__file__).parent


def _nested() -> tuple[keras.Model, keras.Sequential]:
    inner = keras.Sequential([keras.Input((4,)), Spectral(5), keras.layers.Dropout(0.1)])
    x = keras.Input((4,))
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([inner(x), x]))
    return keras.Model(x, out), inner


def test_installed_keras_has_every_internal_the_module_reads() -> None:
    assert missing_internals() == []
    outer, inner = _nested()
    assert missing_internals(functional=outer, sequential=inner) == []
    # The lists name what the module docstring promises, and nothing is checked twice.
    names = [*SEQUENTIAL_INTERNALS, *FUNCTIONAL_INTERNALS, *NODE_INTERNALS]
    assert len(names) == len(set(names)) == 6
    for name in names:
        assert name in keras_graph.__doc__
    ensure_supported()


def test_missing_internals_names_each_missing_attribute() -> None:
    bare = SimpleNamespace()
    assert missing_internals(functional=bare, sequential=bare) == [
        "Sequential._functional",
        "Functional._nodes_by_depth",
        *(f"Node.{name}" for name in NODE_INTERNALS),
    ]
    node = SimpleNamespace(operation=None, is_input=True, outputs=[])
    functional = SimpleNamespace(_nodes_by_depth={0: [node]})
    assert missing_internals(
        functional=functional, sequential=SimpleNamespace(_functional=None)
    ) == ["Node.input_tensors"]


def test_unsupported_keras_fails_with_the_supported_range(monkeypatch) -> None:
    ensure_supported.cache_clear()
    monkeypatch.setattr(keras_graph, "keras_version", lambda: (3, 5, 0))
    try:
        with pytest.raises(RuntimeError, match=re.escape("supports Keras >=3.6,<4")):
            graph_of(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        monkeypatch.setattr(keras_graph, "keras_version", lambda: (4, 0, 0))
        with pytest.raises(RuntimeError, match="version outside the supported range"):
            ensure_supported()
        monkeypatch.undo()
        monkeypatch.setattr(keras_graph, "missing_internals", lambda: ["Node.operation"])
        with pytest.raises(RuntimeError, match=re.escape("missing internals ['Node.operation']")):
            ensure_supported()
    finally:
        monkeypatch.undo()
        ensure_supported.cache_clear()
    ensure_supported()


def test_calls_visit_every_layer_after_its_inputs() -> None:
    outer, inner = _nested()
    order = [call.layer for call in calls(graph_of(outer))]
    assert [type(layer).__name__ for layer in order] == ["Sequential", "Concatenate", "Dense"]
    concat = next(call for call in calls(graph_of(outer)) if call.layer is order[1])
    assert [tuple(t.shape) for t in concat.inputs] == [(None, 5), (None, 4)]
    assert [type(c.layer).__name__ for c in calls(graph_of(inner))] == ["Spectral", "Dropout"]


def test_graph_of_rejects_subclassed_and_unbuilt_models() -> None:
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed models"):
        graph_of(Sub())
    with pytest.raises(ValueError, match="must be built"):
        graph_of(keras.Sequential([keras.layers.Dense(1)]))


# Keras internals: private model attributes, node attributes and the private package.
_INTERNAL = re.compile(
    r"\._functional\b|_nodes_by_depth|\.operation\b|_flatten_layers|keras\.src|_inbound_nodes"
    r"|_outbound_nodes|_keras_history"
)


def test_no_other_spectral_module_reads_keras_internals() -> None:
    offenders = {
        str(path.relative_to(SPECTRAL)): sorted(set(_INTERNAL.findall(path.read_text())))
        for path in SPECTRAL.rglob("*.py")
        if path.name != "keras_graph.py"
    }
    assert {path: found for path, found in offenders.items() if found} == {}
