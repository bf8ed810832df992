"""Re-fitting one consumer layer: its targets, its least-squares fit through its rule, and
keeping the fit only where it lowers the error.

A consumer is a layer of the pruned model that lost input features and whose rule exposes a
linear map (`spectral.rules`: `linear_map`, `held_entries`, `set_linear_map`). This module
streams its inputs and the original layer's pre-activations into normal equations
(`spectral.ridge`), solves them with the method asked for, and writes the result back through
the rule. `spectral.reconstruction` walks the model and calls it for each consumer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from spectral.calibration import slice_rows
from spectral.layer import Spectral, to_numpy
from spectral.layer_inputs import run_stages
from spectral.ridge import NormalEquations, solve_toward_prior
from spectral.rules import ConsumerRule


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


def input_width(rule: ConsumerRule, layer: Any) -> int:
    """Input features of the layer's linear map (rows of its kernel)."""
    linear = rule.linear_map(layer)
    assert linear is not None
    return int(linear[0].shape[0])


def masked_columns(original: Any, pruned: Any, kept: np.ndarray) -> np.ndarray:
    """Output nodes that compaction masked (zero base column, eigenvalue and bias)."""
    if not isinstance(pruned, Spectral):
        return np.zeros(kept.size, dtype=bool)
    base = to_numpy(pruned.base)
    eig = pruned.eigenvalues
    dead = (eig == 0.0) & ~np.any(base != 0.0, axis=0) & (original.eigenvalues[kept] != 0.0)
    if pruned.bias is not None:
        dead &= to_numpy(pruned.bias) == 0.0
    return dead


class ConsumerFit:
    """One layer of the pruned model that lost input features, re-fitted through its rule."""

    def __init__(
        self, path: str, rule: ConsumerRule, original: Any, pruned: Any, kept_out: np.ndarray
    ) -> None:
        self.path = path
        self.rule = rule
        self.pruned = pruned
        self.kept_out = kept_out
        linear = rule.linear_map(original)
        assert linear is not None
        kernel, bias = linear
        self.target_kernel = kernel[:, kept_out]
        self.target_bias = np.zeros(kept_out.size) if bias is None else bias[kept_out]
        current = rule.linear_map(pruned)
        assert current is not None
        self.has_bias = current[1] is not None
        self.width = int(current[0].shape[0])
        self.frozen = masked_columns(original, pruned, kept_out)

    def augmented(self, inputs: np.ndarray) -> np.ndarray:
        if not self.has_bias:
            return inputs
        return np.concatenate([inputs, np.ones((inputs.shape[0], 1))], axis=1)

    def targets(self, original_inputs: np.ndarray) -> np.ndarray:
        return original_inputs @ self.target_kernel + self.target_bias

    def current(self) -> np.ndarray:
        linear = self.rule.linear_map(self.pruned)
        assert linear is not None
        kernel, bias = linear
        return kernel if bias is None else np.vstack([kernel, bias[None, :]])

    def error(self, normal: NormalEquations, weights: np.ndarray) -> float:
        # Masked nodes are meant to be off: they do not count against the fit.
        return normal.relative_error(weights, ~self.frozen)

    def solve(self, normal: NormalEquations, method: str, ridge: float) -> tuple[np.ndarray, str]:
        """The new augmented weights `[kernel; bias]` and a note on what was held back."""
        prior = self.current()
        width = self.width
        fixed = np.zeros_like(prior, dtype=bool)
        fixed[:, self.frozen] = True
        notes = []
        if method == "mean":
            # Kernel held, bias set to the mean residual: the best bias for the kept kernel.
            fixed[:width] = True
        else:
            held = np.array(self.rule.held_entries(self.pruned), dtype=bool)
            held[:, self.frozen] = False
            if np.any(held):
                fixed[:width] |= held
                notes.append(f"{int(held.sum())} kernel entries kept (the layer cannot set them)")
        if np.any(self.frozen):
            notes.append(f"{int(self.frozen.sum())} masked nodes kept at act(0)")
        penalty = np.zeros(prior.shape[0])
        diagonal = np.diag(normal.gram)[:width]
        scale = float(np.mean(diagonal)) if diagonal.size else 0.0
        penalty[:width] = ridge * scale
        return solve_toward_prior(normal, prior, penalty, fixed), "; ".join(notes)

    def assign(self, weights: np.ndarray) -> None:
        bias = weights[self.width] if self.has_bias else None
        self.rule.set_linear_map(self.pruned, weights[: self.width], bias)


def _snapshot(layer: Any) -> list[np.ndarray]:
    return [to_numpy(v) for v in layer.weights]


def _restore(layer: Any, values: list[np.ndarray]) -> None:
    for variable, value in zip(layer.weights, values, strict=True):
        variable.assign(value)


def refit(
    consumer: ConsumerFit,
    pruned_stages: list[keras.Model],
    original_stages: list[keras.Model],
    x: Any,
    rows: int,
    method: str,
    ridge: float,
    chunk_size: int,
) -> LayerReconstruction:
    """Fits `consumer` on `rows` rows of `x`, `chunk_size` at a time; keeps the fit if it helps.

    `pruned_stages` and `original_stages` compute the layer's input in each network
    (`spectral.layer_inputs`). The layer is left as it was when the fit would not lower the
    relative error.
    """
    width = consumer.width + (1 if consumer.has_bias else 0)
    normal = NormalEquations.empty(width, consumer.kept_out.size)
    for start in range(0, rows, chunk_size):
        chunk = slice_rows(x, start, min(start + chunk_size, rows))
        inputs = consumer.augmented(run_stages(pruned_stages, chunk))
        normal.add(inputs, consumer.targets(run_stages(original_stages, chunk)))
    if not all(np.all(np.isfinite(v)) for v in (normal.gram, normal.cross, normal.target_sq)):
        # NaN or overflowing activations (the models' own weights): no fit is meaningful.
        return LayerReconstruction(
            consumer.path, "skipped", reason="non-finite activations on the calibration rows"
        )
    before = consumer.error(normal, consumer.current())
    entry = LayerReconstruction(consumer.path, "skipped", before, before)
    if method == "mean" and not consumer.has_bias:
        entry.reason = "the layer has no bias to take the mean compensation"
        return entry
    saved = _snapshot(consumer.pruned)
    weights, note = consumer.solve(normal, method, ridge)
    if not np.all(np.isfinite(weights)):
        entry.reason = "the re-fit was not finite"
        return entry
    consumer.assign(weights)
    after = consumer.error(normal, consumer.current())
    if not after <= before:
        # Only float32 rounding of an already exact fit can get here: keep the exact fold.
        _restore(consumer.pruned, saved)
        entry.reason = "the re-fit did not reduce the error"
        return entry
    entry.status, entry.error_after, entry.reason = "reconstructed", after, note
    return entry
