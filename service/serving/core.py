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
- ``core.status(model_id, version) -> VersionStatus``: ``state`` is ``"unloaded"`` (never
  asked for in this process), ``"loading"``, ``"available"`` or ``"failed"`` (``reason`` says
  why); plus ``forward`` (``"folded"`` numpy or ``"keras"``) and counts of requests/forwards.

Resolution is served from memory: moves made through this process (`ServingRegistry`) flush it
at once, moves by other processes within ``settings.serving_refresh_s`` (one cheap query per
period, `Registry.serving_generation`). Each version has its own `Batcher`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import InvalidInput, SpectralError
from service.inference import LoadedModel, Predictor, check_array
from service.registry import Registry
from service.serving.batching import Batcher
from service.serving.forward import fold
from service.versions import AliasEvent, VersionRecord

logger = logging.getLogger(__name__)

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
    # The Keras model's own output names (the native API keys multi-output results by them).
    model_output_names: list[str] = field(default_factory=list)


@dataclass
class VersionStatus:
    state: str = "unloaded"
    reason: str | None = None
    forward: str | None = None
    requests: int = 0
    forwards: int = 0


@dataclass
class _Served:
    record: VersionRecord
    batcher: Batcher
    forward: str
    status: VersionStatus = field(default_factory=VersionStatus)
    model_output_names: list[str] = field(default_factory=list)


def batch_limits(record: VersionRecord, max_rows: int, max_delay_ms: float) -> tuple[int, float]:
    """The version's batching limits: the settings, lowered or raised by
    ``metadata["serving"] = {"max_batch_size": rows, "max_delay_ms": ms}``."""
    serving = record.metadata.get("serving")
    if isinstance(serving, dict):
        rows = serving.get("max_batch_size")
        delay = serving.get("max_delay_ms")
        if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 1:
            max_rows = rows
        if isinstance(delay, int | float) and not isinstance(delay, bool) and 0 <= delay <= 1000:
            max_delay_ms = float(delay)
    return max_rows, max_delay_ms


class ServingRegistry(Registry):
    """A `Registry` that tells its listeners (the predict core) of every write it makes, so this
    process never serves a resolution its own writes made stale."""

    listeners: list[Callable[[str], None]]

    def _changed(self, model_id: str) -> None:
        for listener in getattr(self, "listeners", []):
            listener(model_id)

    def create_model(self, name: str, data: bytes, **kwargs: Any) -> VersionRecord:
        record = super().create_model(name, data, **kwargs)
        self._changed(name)
        return record

    def add_version(self, model_id: str, data: bytes, **kwargs: Any) -> VersionRecord:
        record = super().add_version(model_id, data, **kwargs)
        self._changed(model_id)
        return record

    def set_alias(self, model_id: str, alias: str, version: int, **kwargs: Any) -> AliasEvent:
        event = super().set_alias(model_id, alias, version, **kwargs)
        self._changed(model_id)
        return event

    def delete_alias(self, model_id: str, alias: str, **kwargs: Any) -> AliasEvent:
        event = super().delete_alias(model_id, alias, **kwargs)
        self._changed(model_id)
        return event

    def rollback_alias(self, model_id: str, alias: str, **kwargs: Any) -> AliasEvent:
        event = super().rollback_alias(model_id, alias, **kwargs)
        self._changed(model_id)
        return event


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
    """Resolution from memory, one folded forward and one `Batcher` per loaded version.

    Args:
        registry: Where versions are resolved (a `ServingRegistry` is flushed on its writes).
        predictor: Its cache loads the Keras models; its metrics and ``max_batch`` are used.
        max_rows, max_delay_ms: Batching limits (``settings.batch_max_*``).
        refresh_s: Longest a resolution may lag another process's write.
        capacity: How many versions stay loaded.
    """

    def __init__(
        self,
        registry: Registry,
        predictor: Predictor,
        *,
        max_rows: int = 64,
        max_delay_ms: float = 2.0,
        refresh_s: float = 1.0,
        capacity: int = 8,
    ) -> None:
        self.registry = registry
        self.predictor = predictor
        self.metrics = predictor.metrics
        self.max_rows = max_rows
        self.max_delay_ms = max_delay_ms
        self.refresh_s = refresh_s
        self.capacity = capacity
        self._lock = threading.Lock()
        self._resolved: dict[tuple[str, int | None, str | None], VersionRecord] = {}
        self._generation: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self._served: OrderedDict[tuple[str, int, str], _Served] = OrderedDict()
        self._loading: dict[tuple[str, int, str], asyncio.Future[_Served]] = {}
        self._status: dict[tuple[str, int], VersionStatus] = {}
        # Per default/alias selector: the last version that loaded, served while a newer one
        # fails to load.
        self._last_good: dict[tuple[str, str | None], VersionRecord] = {}
        # Records resolved by default/alias (by identity: the same version asked for by number
        # is another object, and gets no fallback), holding a reference so the id stays theirs.
        self._selector_of: dict[int, tuple[VersionRecord, tuple[str, str | None]]] = {}
        self._signatures: dict[tuple[str, int, str], ServingSignature] = {}
        if isinstance(registry, ServingRegistry):
            if not hasattr(registry, "listeners"):
                registry.listeners = []
            registry.listeners.append(self.invalidate)

    # -- resolution -------------------------------------------------------------------------

    def invalidate(self, model_id: str | None = None) -> None:
        """Forgets resolutions (of ``model_id``, or all): the next resolve asks the registry."""
        with self._lock:
            if model_id is None:
                self._resolved.clear()
            else:
                for key in [k for k in self._resolved if k[0] == model_id]:
                    del self._resolved[key]

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.refresh_s:
            return
        generation = self.registry.serving_generation()
        with self._lock:
            if generation != self._generation:
                self._resolved.clear()
                self._generation = generation
            self._checked_at = now

    def resolve(
        self, model_id: str, version: int | None = None, alias: str | None = None
    ) -> VersionRecord:
        self._refresh()
        key = (model_id, version, alias)
        record = self._resolved.get(key)
        if record is None:
            # Errors (unknown model, version, alias) are not cached: the next request asks again.
            if version is None and alias is None:
                record = self.registry.resolve_serving(model_id, DEFAULT_ALIAS)
            else:
                record = self.registry.resolve(model_id, version=version, alias=alias)
            with self._lock:
                self._resolved[key] = record
        if version is None and id(record) not in self._selector_of:
            with self._lock:
                if len(self._selector_of) >= 4096:
                    self._selector_of.clear()
                self._selector_of[id(record)] = (record, (model_id, alias))
        return record

    async def resolve_async(
        self, model_id: str, version: int | None = None, alias: str | None = None
    ) -> VersionRecord:
        """`resolve` for async front ends: a hit is answered on the loop, a miss (or the
        periodic generation check) queries the database on a thread, so a database that is
        slow or locked by a write never stalls the event loop."""
        fresh = time.monotonic() - self._checked_at < self.refresh_s
        if fresh and (model_id, version, alias) in self._resolved:
            return self.resolve(model_id, version, alias)
        return await asyncio.to_thread(self.resolve, model_id, version, alias)

    def signature(self, record: VersionRecord) -> ServingSignature:
        key = (record.model_id, record.version, record.sha256)
        signature = self._signatures.get(key)
        if signature is None:
            signature = ServingSignature(
                model_id=record.model_id,
                version=record.version,
                inputs=_specs(record.metadata["inputs"], "input"),
                outputs=_specs(record.metadata.get("outputs") or [], "output"),
            )
            self._signatures[key] = signature
        return signature

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

    def status(self, model_id: str, version: int) -> VersionStatus:
        return self._status.get((model_id, version)) or VersionStatus()

    # -- loading ----------------------------------------------------------------------------

    def _build(self, record: VersionRecord) -> _Served:
        """Loads (checksum verified, safe mode) and folds; in a thread. The core keeps its own
        LRU of loaded versions (``capacity``), so the Keras `ModelCache` is not used here."""
        model = self.registry.load_keras_model(record)
        folded = fold(model)
        status = self._status.setdefault((record.model_id, record.version), VersionStatus())
        labels = (record.model_id, str(record.version))
        forwards = self.metrics.predict_forwards.labels(*labels)
        rows_hist = self.metrics.predict_batch_rows.labels(*labels)

        def counted(rows: int) -> None:
            status.forwards += 1
            forwards.inc()
            rows_hist.observe(rows)

        max_rows, max_delay_ms = batch_limits(record, self.max_rows, self.max_delay_ms)
        if folded is not None:
            forward_fn = folded

            def forward(arrays: list[np.ndarray]) -> list[np.ndarray]:
                return [forward_fn(arrays[0])]

            batcher = Batcher(
                forward,
                max_rows=max_rows,
                max_delay_s=max_delay_ms / 1000,
                macs_per_row=folded.macs,
                on_forward=counted,
            )
            kind = "folded"
        else:
            # Only the Keras path needs the warm-up forward (graph tracing) of LoadedModel.
            loaded = LoadedModel(record, model)
            batcher = Batcher(
                loaded.predict_arrays,
                max_rows=max_rows,
                max_delay_s=max_delay_ms / 1000,
                macs_per_row=None,
                on_forward=counted,
            )
            kind = "keras"
        names = list(getattr(model, "output_names", []) or [])
        return _Served(record, batcher, kind, status, names)

    async def _served_for(self, record: VersionRecord) -> _Served:
        key = (record.model_id, record.version, record.sha256)
        served = self._served.get(key)
        if served is not None:
            self._served.move_to_end(key)
            return served
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        pending = loop.create_future()
        self._loading[key] = pending
        status = self._status.setdefault((record.model_id, record.version), VersionStatus())
        status.state, status.reason = "loading", None
        try:
            served = await asyncio.to_thread(self._build, record)
        except Exception as exc:
            status.state = "failed"
            status.reason = exc.message if isinstance(exc, SpectralError) else repr(exc)
            logger.warning(
                "predict core: %s v%d failed to load: %s", record.model_id, record.version, exc
            )
            pending.set_exception(exc)
            pending.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            self._loading.pop(key, None)
        status.state, status.forward = "available", served.forward
        self._served[key] = served
        while len(self._served) > self.capacity:
            _, evicted = self._served.popitem(last=False)
            evicted.batcher.close()
            evicted.status.state = "unloaded"
        pending.set_result(served)
        return served

    async def _load_or_fallback(self, record: VersionRecord) -> _Served:
        entry = self._selector_of.get(id(record))
        selector = entry[1] if entry is not None and entry[0] is record else None
        try:
            served = await self._served_for(record)
        except Exception:
            previous = self._last_good.get(selector) if selector is not None else None
            if previous is None or previous.version == record.version:
                raise
            # The default/alias moved to a version that does not load: keep serving the one
            # before it (its status says why).
            return await self._served_for(previous)
        if selector is not None:
            self._last_good[selector] = record
        return served

    # -- predict ----------------------------------------------------------------------------

    def check(self, record: VersionRecord, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The arrays checked against the version's inputs, in their dtypes (`InvalidInput`)."""
        specs = record.metadata["inputs"]
        if len(arrays) != len(specs):
            raise InvalidInput(f"This model has {len(specs)} inputs, got {len(arrays)}")
        checked = [
            check_array(a, spec, f"inputs[{spec.get('name')!r}]", self.predictor.max_batch)
            for a, spec in zip(arrays, specs, strict=True)
        ]
        if len({a.shape[0] for a in checked}) > 1:
            raise InvalidInput(
                f"inputs: every input needs the same batch size, "
                f"got {[a.shape[0] for a in checked]}"
            )
        return checked

    def record_error(self, record: VersionRecord, exc: SpectralError) -> None:
        """Counts a request a front end refused before `predict` (its wire format's decoding)."""
        self.metrics.predictions.labels(record.model_id, str(record.version), exc.code).inc()

    async def predict(self, record: VersionRecord, arrays: list[np.ndarray]) -> Prediction:
        start = time.perf_counter()
        try:
            checked = self.check(record, arrays)
            served = await self._load_or_fallback(record)
            outputs = await served.batcher.submit(checked)
        except SpectralError as exc:
            self.metrics.predictions.labels(record.model_id, str(record.version), exc.code).inc()
            raise
        computed = served.record
        labels = (computed.model_id, str(computed.version))
        served.status.requests += 1
        self.metrics.predict_latency.labels(*labels).observe(time.perf_counter() - start)
        self.metrics.predictions.labels(*labels, "ok").inc()
        names = [spec.name for spec in self.signature(computed).outputs]
        return Prediction(
            computed.model_id, computed.version, outputs, names, served.model_output_names
        )
