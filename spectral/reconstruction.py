"""Data-aware compaction: re-fit the consumers of removed nodes on calibration rows.

Slicing a node out and folding its constant act(0) into the consumer's bias is exact for the
*masked* model, but the masked model is not the original one. Layer-wise reconstruction (ThiNet,
Luo et al. 2017; channel pruning, He et al. 2017) closes most of that gap without training:
every Dense or Spectral layer that lost input features is re-fitted, in place, so that its
pre-activation on calibration rows reproduces the unpruned network's pre-activation.

This module owns that re-fit: finding the consumers, streaming calibration rows through
sub-models of both networks, accumulating the normal equations, solving them, and writing the
weights back (for Spectral layers, as `base` with the eigenvalues kept).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np

from spectral.graph import iter_layers
from spectral.keras_graph import Call, calls, graph_of, is_graph_model
from spectral.layer import Spectral, to_numpy
from spectral.search import Progress, notify

logger = logging.getLogger(__name__)

METHODS = ("least_squares", "mean")

# A direct-space entry whose eigenvalue difference is below this fraction of the layer's
# largest one cannot be set through `base` without blowing `base` up; it keeps its old value.
_DIFF_TOLERANCE = 1e-6


@dataclass
class LayerReconstruction:
    """What reconstruction did to one layer.

    Args:
        layer: The layer's path (`"encoder/dense"` inside nested models).
        status: `"reconstructed"` or `"skipped"`.
        error_before: Relative Frobenius error `||Y_hat - Y|| / ||Y||` of the layer's
            pre-activation against the unpruned network's, on the calibration rows, with the
            exact fold (after the re-fits of earlier layers). `None` when skipped early.
        error_after: The same after the re-fit (equal to `error_before` when skipped).
        reason: Why the layer was skipped, or what was held back while re-fitting it.
    """

    layer: str
    status: str
    error_before: float | None = None
    error_after: float | None = None
    reason: str = ""


@dataclass
class ReconstructionResult:
    """Outcome of `reconstruct`, one entry per consumer of removed nodes (and per masked layer).

    Args:
        method: `"least_squares"` or `"mean"`.
        rows: Calibration rows used.
        layers: One `LayerReconstruction` per layer, in topological order.
        seconds: Wall time of the whole call.
    """

    method: str
    rows: int
    layers: list[LayerReconstruction] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def reconstructed(self) -> list[str]:
        """Paths of the layers that were re-fitted."""
        return [e.layer for e in self.layers if e.status == "reconstructed"]

    @property
    def skipped(self) -> dict[str, str]:
        """Path -> reason for each layer that kept today's exact fold."""
        return {e.layer: e.reason for e in self.layers if e.status == "skipped"}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary (for job reports)."""
        return {
            "method": self.method,
            "rows": self.rows,
            "seconds": self.seconds,
            "layers": [asdict(entry) for entry in self.layers],
        }


class _Skip(Exception):
    """Raised inside the per-layer work when a layer must keep its exact fold."""


# -- reaching a layer's input -------------------------------------------------------------------


def _model_inputs(model: keras.Model) -> Any:
    """The model's inputs in the structure its callers pass them (single tensor, list, dict)."""
    if isinstance(model, keras.Sequential):
        # Sequential's `input` is the base property (its first call), not its Input layer.
        return model.inputs[0]
    return model.input


class _Reach:
    """Builds, once, the chain of sub-models that maps a model's inputs to a layer's input.

    A layer inside a nested model is reached in stages: the outer model up to where the nested
    model is called, then the nested model up to the layer. Each stage is a plain
    `keras.Model(inputs, tensor)` over the same layer objects, so re-fitted weights are seen
    by later runs without rebuilding anything.
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
        names = path.split("/")
        parent = self.model
        stages: list[keras.Model] = []
        for depth, name in enumerate(names):
            layer = parent.get_layer(name)
            found = self._calls_in(parent).get(id(layer), [])
            if len(found) != 1:
                what = "nested model" if depth < len(names) - 1 else "layer"
                raise _Skip(
                    f"{what} '{name}' is called {len(found)} times: one fit cannot serve all"
                )
            tensors = found[0].inputs
            try:
                stage = keras.Model(
                    inputs=_model_inputs(parent),
                    outputs=tensors[0] if len(tensors) == 1 else tensors,
                )
            except (ValueError, AttributeError) as exc:
                raise _Skip(f"input of '{name}' cannot be reached from its model ({exc})") from exc
            stages.append(stage)
            if depth < len(names) - 1:
                if not is_graph_model(layer):
                    raise _Skip(f"'{name}' is not a Sequential or Functional model")
                parent = layer
        return stages


def _run(stages: list[keras.Model], chunk: Any) -> np.ndarray:
    value = chunk
    for stage in stages:
        value = stage(value, training=False)
    if isinstance(value, list | tuple):
        raise _Skip("the layer has several inputs")
    out = np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)
    # A Dense layer on (batch, ..., features) maps every position: each one is a row.
    return out.reshape(-1, out.shape[-1])


def count_rows(x: Any) -> int:
    """Rows of calibration data: an array, or a list/dict of arrays with the same rows."""
    leaves = keras.tree.flatten(x)
    if not leaves:
        raise ValueError("Calibration data `x` is empty. Received: x with no arrays")
    return int(np.shape(leaves[0])[0])


def slice_rows(x: Any, start: int, stop: int) -> Any:
    """Rows `start:stop` of every array in `x`."""
    return keras.tree.map_structure(lambda a: a[start:stop], x)


# -- one consumer ---------------------------------------------------------------------------------


def _weights(layer: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The layer's direct-space kernel `(in, out)` and bias, in float64."""
    kernel = to_numpy(layer.kernel).astype(np.float64)
    bias = None if layer.bias is None else to_numpy(layer.bias).astype(np.float64)
    return kernel, bias


def _input_width(layer: Any) -> int:
    return int(layer.kernel.shape[0])


def _kept_outputs(
    original: Spectral, pruned: Spectral, path: str, keep: Mapping[str, np.ndarray] | None
) -> np.ndarray:
    """Indices of the original output nodes that the pruned Spectral layer still has."""
    if pruned.units == original.units:
        return np.arange(original.units)
    if keep is not None and path in keep:
        return np.asarray(keep[path], dtype=int)
    # Compaction slices `diag_end` in order and never changes it, so the kept nodes are the
    # pruned layer's eigenvalues found, in order, among the original's.
    source, target = original.eigenvalues, pruned.eigenvalues
    kept, i = [], 0
    for value in target:
        while i < source.size and source[i] != value:
            i += 1
        if i == source.size:
            raise _Skip(
                f"the kept nodes of '{path}' are not a subset of the original's; pass keep="
            )
        kept.append(i)
        i += 1
    indices = np.asarray(kept, dtype=int)
    removed = np.setdiff1d(np.arange(source.size), indices)
    if np.intersect1d(source[indices], source[removed]).size:
        raise _Skip(f"equal eigenvalues make the kept nodes of '{path}' ambiguous; pass keep=")
    return indices


def _masked_columns(original: Spectral, pruned: Spectral, kept: np.ndarray) -> np.ndarray:
    """Output nodes that compaction masked (zero base column, eigenvalue and bias)."""
    base = to_numpy(pruned.base)
    eig = pruned.eigenvalues
    dead = (eig == 0.0) & ~np.any(base != 0.0, axis=0) & (original.eigenvalues[kept] != 0.0)
    if pruned.bias is not None:
        dead &= to_numpy(pruned.bias) == 0.0
    return dead


@dataclass
class _Normal:
    """Streaming sums of one layer's normal equations, in float64: O(in^2 + in*out) memory."""

    gram: np.ndarray
    cross: np.ndarray
    target_sq: np.ndarray
    rows: int = 0

    @classmethod
    def empty(cls, width: int, outputs: int) -> _Normal:
        return cls(np.zeros((width, width)), np.zeros((width, outputs)), np.zeros(outputs))

    def add(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        self.gram += inputs.T @ inputs
        self.cross += inputs.T @ targets
        self.target_sq += np.sum(targets * targets, axis=0)
        self.rows += inputs.shape[0]

    def relative_error(self, weights: np.ndarray, columns: np.ndarray) -> float:
        """`||X W - Y|| / ||Y||` over `columns`, from the sums alone (no second pass)."""
        w, cross = weights[:, columns], self.cross[:, columns]
        total = float(np.sum(self.target_sq[columns]))
        sq = total - 2.0 * float(np.sum(w * cross)) + float(np.sum(w * (self.gram @ w)))
        return float(np.sqrt(max(sq, 0.0) / total)) if total > 0 else 0.0


def _solve_columns(
    gram: np.ndarray,
    cross: np.ndarray,
    prior: np.ndarray,
    penalty: np.ndarray,
    fixed: np.ndarray,
) -> np.ndarray:
    """Ridge least squares toward `prior`: min ||X W - Y||^2 + sum(penalty * (W - prior)^2).

    Entries flagged in `fixed` are held at `prior`; the others are solved given them. Shrinking
    toward the current (exactly folded) weights rather than toward zero keeps the solution
    exactly where it was when those weights already reproduce the targets.
    """
    lhs = gram + np.diag(penalty)
    rhs = cross + penalty[:, None] * prior
    solution = prior.copy()
    free_columns = ~np.any(fixed, axis=0)
    if np.any(free_columns):
        solution[:, free_columns] = _stable_solve(lhs, rhs[:, free_columns])
    for j in np.flatnonzero(~free_columns):
        free = ~fixed[:, j]
        if not np.any(free):
            continue
        held = gram[np.ix_(free, ~free)] @ prior[~free, j]
        solution[free, j] = _stable_solve(lhs[np.ix_(free, free)], rhs[free, j] - held)
    return solution


def _stable_solve(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    try:
        # Cholesky: the ridge makes `lhs` symmetric positive definite in the normal case.
        factor = np.linalg.cholesky(lhs)
        return np.linalg.solve(factor.T, np.linalg.solve(factor, rhs))
    except np.linalg.LinAlgError:
        # Singular without a ridge (dead inputs): the minimum-norm least-squares solution.
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


class _Consumer:
    """One Dense or Spectral layer of the pruned model that lost input features."""

    def __init__(self, path: str, original: Any, pruned: Any, kept_out: np.ndarray) -> None:
        self.path = path
        self.pruned = pruned
        self.kept_out = kept_out
        kernel, bias = _weights(original)
        self.target_kernel = kernel[:, kept_out]
        self.target_bias = np.zeros(kept_out.size) if bias is None else bias[kept_out]
        self.has_bias = pruned.bias is not None
        self.frozen = (
            _masked_columns(original, pruned, kept_out)
            if isinstance(pruned, Spectral)
            else np.zeros(kept_out.size, dtype=bool)
        )

    def augmented(self, inputs: np.ndarray) -> np.ndarray:
        if not self.has_bias:
            return inputs
        return np.concatenate([inputs, np.ones((inputs.shape[0], 1))], axis=1)

    def targets(self, original_inputs: np.ndarray) -> np.ndarray:
        return original_inputs @ self.target_kernel + self.target_bias

    def current(self) -> np.ndarray:
        kernel, bias = _weights(self.pruned)
        return kernel if bias is None else np.vstack([kernel, bias[None, :]])

    def error(self, normal: _Normal, weights: np.ndarray) -> float:
        # Masked nodes are meant to be off: they do not count against the fit.
        return normal.relative_error(weights, ~self.frozen)

    def solve(self, normal: _Normal, method: str, ridge: float) -> tuple[np.ndarray, str]:
        """The new augmented weights `[kernel; bias]` and a note on what was held back."""
        prior = self.current()
        width = prior.shape[0] - (1 if self.has_bias else 0)
        fixed = np.zeros_like(prior, dtype=bool)
        fixed[:, self.frozen] = True
        notes = []
        if method == "mean":
            # Kernel held, bias set to the mean residual: the best bias for the kept kernel.
            fixed[:width] = True
        elif isinstance(self.pruned, Spectral):
            tiny = ~self._settable()
            tiny[:, self.frozen] = False
            if np.any(tiny):
                fixed[:width] |= tiny
                notes.append(
                    f"{int(tiny.sum())} kernel entries kept (diag_start - diag_end ~ 0 there)"
                )
        if np.any(self.frozen):
            notes.append(f"{int(self.frozen.sum())} masked nodes kept at act(0)")
        penalty = np.zeros(prior.shape[0])
        diagonal = np.diag(normal.gram)[:width]
        scale = float(np.mean(diagonal)) if diagonal.size else 0.0
        penalty[:width] = ridge * scale
        return _solve_columns(normal.gram, normal.cross, prior, penalty, fixed), "; ".join(notes)

    def _eigen_differences(self) -> np.ndarray:
        start, end = self.pruned.return_diag()
        return start.astype(np.float64) - end.astype(np.float64)  # (in, 1) - (1, out)

    def _settable(self) -> np.ndarray:
        """Kernel entries that `base` can set without blowing up (Spectral consumers)."""
        magnitude = np.abs(self._eigen_differences())
        return magnitude > _DIFF_TOLERANCE * max(float(np.max(magnitude)), 1e-30)

    def assign(self, weights: np.ndarray) -> None:
        width = _input_width(self.pruned)
        kernel = weights[:width]
        if isinstance(self.pruned, Spectral):
            # kernel = base * (diag_start - diag_end): solve for base, eigenvalues untouched.
            diff = self._eigen_differences()
            base = to_numpy(self.pruned.base).astype(np.float64)
            usable = self._settable()
            base[usable] = kernel[usable] / diff[usable]
            self.pruned.base.assign(base.astype(self.pruned.base.dtype))
        else:
            self.pruned.kernel.assign(kernel.astype(self.pruned.kernel.dtype))
        if self.has_bias:
            self.pruned.bias.assign(weights[width].astype(self.pruned.bias.dtype))


# -- the public entry point ---------------------------------------------------------------------


def _check(method: str, ridge: float, chunk_size: int) -> None:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, int | float) or not ridge >= 0:
        raise ValueError(f"`ridge` must be a number >= 0. Received: ridge={ridge!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"`chunk_size` must be a positive integer. Received: chunk_size={chunk_size!r}"
        )


def _is_consumer_type(layer: Any) -> bool:
    # Exact Dense only: a subclass may compute something else from the same kernel.
    return isinstance(layer, Spectral) or type(layer) is keras.layers.Dense


def _is_masked(original: Any, pruned: Any) -> bool:
    if not (isinstance(original, Spectral) and isinstance(pruned, Spectral)):
        return False
    if pruned.units != original.units:
        return False
    return bool(np.any(_masked_columns(original, pruned, np.arange(pruned.units))))


def _resized(original: Any, pruned: Any) -> bool:
    """Whether some weight of `pruned` has another shape than the original's (it was sliced)."""
    shapes = [tuple(v.shape) for v in original.weights]
    return shapes != [tuple(v.shape) for v in pruned.weights]


def _snapshot(layer: Any) -> list[np.ndarray]:
    return [to_numpy(v) for v in layer.weights]


def _restore(layer: Any, values: list[np.ndarray]) -> None:
    for variable, value in zip(layer.weights, values, strict=True):
        variable.assign(value)


def _refit(
    consumer: _Consumer,
    pruned_stages: list[keras.Model],
    original_stages: list[keras.Model],
    x: Any,
    rows: int,
    method: str,
    ridge: float,
    chunk_size: int,
) -> LayerReconstruction:
    width = _input_width(consumer.pruned) + (1 if consumer.has_bias else 0)
    normal = _Normal.empty(width, consumer.kept_out.size)
    for start in range(0, rows, chunk_size):
        chunk = slice_rows(x, start, min(start + chunk_size, rows))
        inputs = consumer.augmented(_run(pruned_stages, chunk))
        normal.add(inputs, consumer.targets(_run(original_stages, chunk)))
    before = consumer.error(normal, consumer.current())
    entry = LayerReconstruction(consumer.path, "skipped", before, before)
    if method == "mean" and not consumer.has_bias:
        entry.reason = "the layer has no bias to take the mean compensation"
        return entry
    saved = _snapshot(consumer.pruned)
    weights, note = consumer.solve(normal, method, ridge)
    consumer.assign(weights)
    after = consumer.error(normal, consumer.current())
    if after > before:
        # Only float32 rounding of an already exact fit can get here: keep the exact fold.
        _restore(consumer.pruned, saved)
        entry.reason = "the re-fit did not reduce the error"
        return entry
    entry.status, entry.error_after, entry.reason = "reconstructed", after, note
    return entry


def reconstruct(
    original: keras.Model,
    pruned: keras.Model,
    x: Any,
    *,
    method: str = "least_squares",
    ridge: float = 1e-3,
    chunk_size: int = 1024,
    progress: Progress | None = None,
    keep: Mapping[str, np.ndarray] | None = None,
) -> ReconstructionResult:
    """Re-fits, in place, the layers of `pruned` that lost input nodes, on calibration rows.

    A *consumer* is a Dense or Spectral layer of `pruned` whose input is narrower than the
    same-named layer's of `original`: it read removed nodes, directly or through pass-through
    layers, BatchNormalization, Concatenate or merges. Consumers are visited in topological
    order. Each one's pre-activation `inputs @ kernel + bias` is fitted to the pre-activation
    of the same layer in `original` (for a Spectral consumer that lost output nodes too, to the
    kept nodes' columns), with the inputs taken from `pruned` as it stands after the earlier
    re-fits, so each layer also corrects what the layers before it left over.

    Methods:

    - `"least_squares"`: the kernel and bias minimise
      `||X W + b - Y||^2 + lam * ||W - W0||^2` over the calibration rows, where `X` are the
      pruned network's inputs to the layer, `Y` the original pre-activations, `W0` the kernel
      after the exact fold, and `lam = ridge * mean(diag(X^T X))`. The bias is not penalised.
      The normal equations are accumulated in float64, `chunk_size` rows at a time, and
      solved by Cholesky (minimum-norm least squares if singular). Shrinking toward `W0`
      rather than zero keeps an already exact layer unchanged. A layer without a bias is
      fitted without one.
    - `"mean"` (mean compensation, cheaper): the kernel is kept and the bias becomes the mean
      residual, `b = mean(Y - X W0)` over the calibration rows. Where the layer's kept inputs
      equal the original's (no re-fitted layer upstream) this is
      `b = b_original + mean(a_removed) @ W_original[removed]`: the mean of each removed
      node's original activation replaces the act(0) constant of the exact fold. A layer
      without a bias is skipped.

    For a Spectral consumer the direct-space kernel is solved and written back as
    `base = kernel / (diag_start - diag_end)`: the eigenvalues (`diag_start`, `diag_end`) do
    not change. Entries where `|diag_start - diag_end|` is below 1e-6 of the layer's largest
    are held at their old value and the rest of the column is solved given them; nodes that
    compaction masked stay masked. Layers that cannot be re-fitted (a shared layer, a layer of
    another type whose weights were sliced, an input that cannot be reached, a masked layer's
    consumers) keep the exact fold and are listed with the reason.

    Args:
        original: The unpruned model. Not modified.
        pruned: Its compacted version (same layer names), e.g. from `prune_percentile`.
            Modified in place.
        x: Calibration inputs: an array, or a list/dict of arrays for several model inputs.
        method: `"least_squares"` or `"mean"`.
        ridge: Relative ridge strength, >= 0 (scaled by the mean diagonal of `X^T X`).
        chunk_size: Calibration rows per forward pass; memory does not grow with the rows.
        progress: Optional `progress(fraction, message)`, called per layer; its exceptions
            propagate.
        keep: Optional path -> kept output-node indices for each sliced Spectral layer (as
            `select_nodes` returns them). Inferred from the eigenvalues when omitted.

    Returns:
        A `ReconstructionResult` with the relative error of every consumer before and after.

    Raises:
        ValueError: On an unknown method, a negative ridge, a bad chunk size or empty `x`.

    Example:

    >>> small = spectral.prune_percentile(model, 80)
    >>> result = reconstruct(model, small, x_train[:2000])
    >>> [(e.layer, e.error_before, e.error_after) for e in result.layers]
    """
    _check(method, ridge, chunk_size)
    started = time.perf_counter()
    rows = count_rows(x)
    if rows == 0:
        raise ValueError("Calibration data `x` has no rows. Received: x with 0 rows")
    result = ReconstructionResult(method=method, rows=rows)
    originals = dict(iter_layers(original))
    work: list[tuple[str, Any, Any]] = []
    for path, layer in iter_layers(pruned):
        source = originals.get(path)
        if source is None or not _resized(source, layer):
            if source is not None and _is_masked(source, layer):
                result.layers.append(
                    LayerReconstruction(
                        path,
                        "skipped",
                        reason="masked, not sliced (a consumer could not be sliced): its "
                        "consumers keep the exact fold",
                    )
                )
            continue
        if _is_consumer_type(layer):
            if _input_width(layer) < _input_width(source):
                work.append((path, source, layer))
        elif not isinstance(layer, keras.layers.BatchNormalization):
            result.layers.append(
                LayerReconstruction(
                    path, "skipped", reason=f"unsupported consumer ({type(layer).__name__})"
                )
            )
    reach_pruned, reach_original = _Reach(pruned), _Reach(original)
    for index, (path, source, layer) in enumerate(work):
        notify(progress, index / max(len(work), 1), f"reconstructing {path}")
        try:
            kept = (
                _kept_outputs(source, layer, path, keep)
                if isinstance(layer, Spectral)
                else np.arange(int(layer.kernel.shape[1]))
            )
            consumer = _Consumer(path, source, layer, kept)
            entry = _refit(
                consumer,
                reach_pruned.stages(path),
                reach_original.stages(path),
                x,
                rows,
                method,
                ridge,
                chunk_size,
            )
        except _Skip as exc:
            entry = LayerReconstruction(path, "skipped", reason=str(exc))
        logger.debug("Reconstruction of %s: %s", path, entry)
        result.layers.append(entry)
    order = {path: i for i, (path, _) in enumerate(iter_layers(pruned))}
    result.layers.sort(key=lambda entry: order[entry.layer])
    result.seconds = time.perf_counter() - started
    notify(progress, 1.0, "reconstruction done")
    return result
