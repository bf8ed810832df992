"""Streaming ridge least squares: normal equations summed chunk by chunk, solved toward a prior.

Reconstruction fits each re-fitted layer's `[kernel; bias]` to target pre-activations on many
calibration rows. This module owns the numerics: the float64 sums `X^T X`, `X^T Y` and `|Y|^2`
(memory independent of the row count), the relative error read back from those sums, and a
stable solve that can hold some entries at their prior value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class NormalEquations:
    """Streaming sums of one least-squares problem `X W ~ Y`, in float64.

    Memory is O(in^2 + in * out), whatever the number of rows added.
    """

    gram: np.ndarray
    cross: np.ndarray
    target_sq: np.ndarray
    rows: int = 0

    @classmethod
    def empty(cls, width: int, outputs: int) -> NormalEquations:
        """Zero sums for `width` input columns and `outputs` target columns."""
        return cls(np.zeros((width, width)), np.zeros((width, outputs)), np.zeros(outputs))

    def add(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        """Adds rows: `inputs` `(rows, width)` and `targets` `(rows, outputs)`."""
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


def solve_toward_prior(
    normal: NormalEquations, prior: np.ndarray, penalty: np.ndarray, fixed: np.ndarray
) -> np.ndarray:
    """Ridge least squares toward `prior`: min ||X W - Y||^2 + sum(penalty * (W - prior)^2).

    Entries flagged in `fixed` are held at `prior`; the others are solved given them. Shrinking
    toward the current (exactly folded) weights rather than toward zero keeps the solution
    exactly where it was when those weights already reproduce the targets.

    Args:
        normal: The accumulated sums.
        prior: `(width, outputs)` weights to shrink toward and to hold where `fixed`.
        penalty: `(width,)` ridge weight of each input row (0 leaves a row unpenalised).
        fixed: Boolean `(width, outputs)`: entries held at `prior`.

    Returns:
        The solved `(width, outputs)` weights.
    """
    gram = normal.gram
    lhs = gram + np.diag(penalty)
    rhs = normal.cross + penalty[:, None] * prior
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
