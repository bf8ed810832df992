"""Reaching a layer's input: the sub-models that map a model's inputs to what one layer reads.

Reconstruction needs, for every re-fitted layer, the rows that layer sees in the pruned model and
in the original one. A layer inside a nested model is reached in stages: the outer model up to
where the nested model is called, then the nested model up to the layer. Each stage is a plain
`keras.Model(inputs, tensor)` over the same layer objects, so weights re-fitted in place are seen
by later runs without rebuilding anything.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from spectral.keras_graph import Call, calls, graph_of, is_graph_model


class Unreachable(Exception):
    """A layer's input cannot be computed on its own (shared layer, several inputs, ...)."""


def _model_inputs(model: keras.Model) -> Any:
    """The model's inputs in the structure its callers pass them (single tensor, list, dict)."""
    if isinstance(model, keras.Sequential):
        # Sequential's `input` is the base property (its first call), not its Input layer.
        return model.inputs[0]
    return model.input


class LayerInputs:
    """Builds, once per model, the chain of sub-models that computes a layer's input.

    Args:
        model: A Sequential or Functional model; the layers of nested models are reached by
            path (`"encoder/dense"`).
    """

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self._calls: dict[int, dict[int, list[Call]]] = {}

    def _calls_in(self, parent: keras.Model) -> dict[int, list[Call]]:
        if id(parent) not in self._calls:
            by_layer: dict[int, list[Call]] = {}
            for call in calls(graph_of(parent)):
                by_layer.setdefault(id(call.layer), []).append(call)
            self._calls[id(parent)] = by_layer
        return self._calls[id(parent)]

    def stages(self, path: str) -> list[keras.Model]:
        """The sub-models that, run in order, turn the model's inputs into `path`'s input.

        Raises:
            Unreachable: If the layer or a model on the way is called more than once, or the
                input cannot be reached from the model's inputs.
        """
        names = path.split("/")
        parent = self.model
        stages: list[keras.Model] = []
        for depth, name in enumerate(names):
            layer = parent.get_layer(name)
            found = self._calls_in(parent).get(id(layer), [])
            if len(found) != 1:
                what = "nested model" if depth < len(names) - 1 else "layer"
                raise Unreachable(
                    f"{what} '{name}' is called {len(found)} times: one fit cannot serve all"
                )
            tensors = found[0].inputs
            try:
                stage = keras.Model(
                    inputs=_model_inputs(parent),
                    outputs=tensors[0] if len(tensors) == 1 else tensors,
                )
            except (ValueError, AttributeError) as exc:
                raise Unreachable(
                    f"input of '{name}' cannot be reached from its model ({exc})"
                ) from exc
            stages.append(stage)
            if depth < len(names) - 1:
                if not is_graph_model(layer):
                    raise Unreachable(f"'{name}' is not a Sequential or Functional model")
                parent = layer
        return stages


def run_stages(stages: list[keras.Model], chunk: Any) -> np.ndarray:
    """The layer's input on `chunk`, in float64, one row per feature vector.

    Raises:
        Unreachable: If the layer reads several tensors.
    """
    value = chunk
    for stage in stages:
        value = stage(value, training=False)
    if isinstance(value, list | tuple):
        raise Unreachable("the layer has several inputs")
    out = np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)
    # A Dense layer on (batch, ..., features) maps every position: each one is a row.
    return out.reshape(-1, out.shape[-1])
