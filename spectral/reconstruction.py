"""Data-aware compaction: re-fit the consumers of removed nodes on calibration rows.

Slicing a node out and folding its constant act(0) into the consumer's bias is exact for the
*masked* model, but the masked model is not the original one. Layer-wise reconstruction (ThiNet,
Luo et al. 2017; channel pruning, He et al. 2017) closes most of that gap without training:
every Dense or Spectral layer that lost input features is re-fitted, in place, so that its
pre-activation on calibration rows reproduces the unpruned network's pre-activation.

This module owns the walk: finding the consumers (layers whose rule has a linear map) in
topological order, pairing each with its original, streaming calibration rows through both
networks (`spectral.layer_inputs`), and keeping a fit only where it lowers the error. The
numerics live in `spectral.ridge`; how a layer type reads and writes its kernel (for Spectral,
`base` with the eigenvalues kept) lives in its rule (`spectral.rules`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np

from spectral.calibration import count_rows, model_rows
from spectral.graph import iter_layers
from spectral.layer import Spectral
from spectral.layer_inputs import LayerInputs, Unreachable
from spectral.layer_refit import (
    ConsumerFit,
    LayerReconstruction,
    input_width,
    masked_columns,
    refit,
)
from spectral.rules import ConsumerRule, rule_for
from spectral.search import Progress, notify

logger = logging.getLogger(__name__)

METHODS = ("least_squares", "mean")


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


# -- which layers, and which of their nodes ---------------------------------------------------


def _linear_rule(layer: Any) -> ConsumerRule | None:
    """The layer's rule when that rule can re-fit it (an affine map of its input), else None."""
    rule = rule_for(layer)
    if rule is None or rule.linear_map(layer) is None:
        return None
    return rule


def _kept_outputs(
    original: Any, pruned: Any, path: str, keep: Mapping[str, np.ndarray] | None, outputs: int
) -> np.ndarray:
    """Indices of the original output nodes that the pruned layer (`outputs` wide) still has."""
    if not isinstance(pruned, Spectral) or pruned.units == original.units:
        return np.arange(outputs)
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


def _is_masked(original: Any, pruned: Any) -> bool:
    if not (isinstance(original, Spectral) and isinstance(pruned, Spectral)):
        return False
    if pruned.units != original.units:
        return False
    return bool(np.any(masked_columns(original, pruned, np.arange(pruned.units))))


def _resized(original: Any, pruned: Any) -> bool:
    """Whether some weight of `pruned` has another shape than the original's (it was sliced)."""
    shapes = [tuple(v.shape) for v in original.weights]
    return shapes != [tuple(v.shape) for v in pruned.weights]


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

    A *consumer* is a layer of `pruned` whose rule has a linear map (Dense, Spectral, or a
    layer registered with such a rule) and whose input is narrower than the
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
        ValueError: On an unknown method, a negative ridge, a bad chunk size, or `x` with no
            rows, the wrong feature width, or NaN or infinite values.
        TypeError: If `x` is a dataset or generator, not numeric, or not structured like the
            model's inputs.

    Example:

    >>> small = spectral.prune_percentile(model, 80)
    >>> result = reconstruct(model, small, x_train[:2000])
    >>> [(e.layer, e.error_before, e.error_after) for e in result.layers]
    """
    _check(method, ridge, chunk_size)
    started = time.perf_counter()
    x = model_rows(original, x, "x")
    rows = count_rows(x)
    result = ReconstructionResult(method=method, rows=rows)
    originals = dict(iter_layers(original))
    work: list[tuple[str, ConsumerRule, Any, Any]] = []
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
        rule = _linear_rule(layer)
        if rule is not None:
            if input_width(rule, layer) < input_width(rule, source):
                work.append((path, rule, source, layer))
        elif getattr(rule_for(layer), "absorbs", False):
            # Carrying layers (BatchNormalization, ...) pass the kept set on: not consumers.
            result.layers.append(
                LayerReconstruction(
                    path, "skipped", reason=f"unsupported consumer ({type(layer).__name__})"
                )
            )
    reach_pruned, reach_original = LayerInputs(pruned), LayerInputs(original)
    for index, (path, rule, source, layer) in enumerate(work):
        notify(progress, index / max(len(work), 1), f"reconstructing {path}")
        try:
            linear = rule.linear_map(layer)
            assert linear is not None
            kept = _kept_outputs(source, layer, path, keep, int(linear[0].shape[1]))
            consumer = ConsumerFit(path, rule, source, layer, kept)
            entry = refit(
                consumer,
                reach_pruned.stages(path),
                reach_original.stages(path),
                x,
                rows,
                method,
                ridge,
                chunk_size,
            )
        except (_Skip, Unreachable) as exc:
            entry = LayerReconstruction(path, "skipped", reason=str(exc))
        logger.debug("Reconstruction of %s: %s", path, entry)
        result.layers.append(entry)
    order = {path: i for i, (path, _) in enumerate(iter_layers(pruned))}
    result.layers.sort(key=lambda entry: order[entry.layer])
    result.seconds = time.perf_counter() - started
    notify(progress, 1.0, "reconstruction done")
    return result
