"""`PredictCore`: resolve a version, check the inputs, run the forward, count it.

CONTRACT (front ends rely on exactly this; internals may change):

- ``core.resolve(model_id, version=None, alias=None) -> VersionRecord``: by number, by alias,
  or neither: alias ``production`` if set, else the latest. Raises the registry's
  ModelNotFound / VersionNotFound / AliasNotFound.
- ``core.signature(record) -> ServingSignature``: inputs and outputs (name, numpy dtype name,
  shape with None for unknown dims), in the model's order.
- ``await core.predict(record, arrays) -> Prediction``: ``arrays`` is a list of numpy arrays in
  the signature's input order (any numeric dtype; the core converts). The core checks shape,
  batch size, finiteness and dtype with the native API's wording (`InvalidInput`: "expected
  shape [-1, 64], got [1, 63]"), runs the forward and records metrics.
- ``core.order_inputs(signature, named) -> list[np.ndarray]``: a dict keyed by input name to
  the ordered list, with the native API's wording for missing or unexpected names.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.inference import Predictor, check_array
from service.registry import Registry
from service.versions import VersionRecord

DEFAULT_ALIAS = "production"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | None]


@dataclass(frozen=True)
class ServingSignature:
    model_id: str
    version: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class Prediction:
    model_id: str
    version: int
    outputs: list[np.ndarray]
    output_names: list[str]


def _specs(described: list[dict[str, Any]], prefix: str) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=str(d.get("name") or f"{prefix}_{i}"),
            dtype=str(d.get("dtype") or "float32"),
            shape=list(d["shape"]),
        )
        for i, d in enumerate(described)
    ]


class PredictCore:
    def __init__(self, registry: Registry, predictor: Predictor) -> None:
        self.registry = registry
        self.predictor = predictor

    def resolve(
        self, model_id: str, version: int | None = None, alias: str | None = None
    ) -> VersionRecord:
        if version is None and alias is None:
            return self.registry.resolve_serving(model_id, DEFAULT_ALIAS)
        return self.registry.resolve(model_id, version=version, alias=alias)

    def signature(self, record: VersionRecord) -> ServingSignature:
        return ServingSignature(
            model_id=record.model_id,
            version=record.version,
            inputs=_specs(record.metadata["inputs"], "input"),
            outputs=_specs(record.metadata.get("outputs") or [], "output"),
        )

    def order_inputs(
        self, signature: ServingSignature, named: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        names = [spec.name for spec in signature.inputs]
        missing = [name for name in names if name not in named]
        extra = sorted(set(named) - set(names))
        if missing or extra:
            raise InvalidInput(
                f"inputs: expected keys {names}, missing {missing}, unexpected {extra}",
                details={"expected": names, "missing": missing, "unexpected": extra},
            )
        return [named[name] for name in names]

    async def predict(self, record: VersionRecord, arrays: list[np.ndarray]) -> Prediction:
        signature = self.signature(record)
        if len(arrays) != len(signature.inputs):
            raise InvalidInput(
                f"This model has {len(signature.inputs)} inputs, got {len(arrays)}"
            )
        specs = record.metadata["inputs"]
        checked = [
            check_array(a, spec, f"inputs[{spec.get('name')!r}]", self.predictor.max_batch)
            for a, spec in zip(arrays, specs, strict=True)
        ]
        loaded = await asyncio.to_thread(self.predictor.cache.get, record)
        outputs = await asyncio.to_thread(loaded.predict_arrays, checked)
        names = [spec.name for spec in signature.outputs]
        return Prediction(record.model_id, record.version, outputs, names)
