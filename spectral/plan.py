"""What a pruning plan says: which features of each tensor survive, layer by layer.

The planner (`spectral.graph.Planner`) fills these in; compaction (`spectral.compaction`)
applies them. A plan can be inspected before it is applied (`Plan.summary`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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

    def removed(self, dim: int) -> np.ndarray:
        """Indices, among `dim` original features, of those that were removed."""
        if self.kept is None:
            return np.zeros(0, dtype=int)
        removed = np.ones(dim, dtype=bool)
        removed[self.kept] = False
        return np.flatnonzero(removed)


UNTOUCHED = Features()


def union_sources(features: list[Features]) -> frozenset[int]:
    """The Spectral layers whose pruning any of `features` carries."""
    return frozenset().union(*(f.sources for f in features))


@dataclass
class LayerPlan:
    """How one layer changes.

    Args:
        inputs: The features of each of its inputs.
        keep: For a sliced Spectral layer, the output nodes it keeps.
        mask: For a masked Spectral layer, the output nodes left active.
        layer: The layer this entry is for.
        rule: The `ConsumerRule` that handles it (`None` for nested models and layers whose
            inputs lost nothing and that no rule knows).
    """

    inputs: list[Features]
    keep: np.ndarray | None = None
    mask: np.ndarray | None = None
    layer: Any = None
    rule: Any = None


@dataclass
class Plan:
    """Result of one planner run.

    Args:
        layers: Layer id -> its `LayerPlan`.
        conflicts: Spectral layer id -> why its nodes cannot be sliced away (it is masked).
        output_sources: Ids of the Spectral layers whose nodes reach a model output.
    """

    layers: dict[int, LayerPlan] = field(default_factory=dict)
    conflicts: dict[int, str] = field(default_factory=dict)
    output_sources: frozenset[int] = frozenset()

    def summary(self) -> list[dict[str, Any]]:
        """One entry per changed layer, in planning order, for reading or logging.

        Each entry has `layer` (name), `rule` (the rule's class name), `inputs_kept` (per
        input, the number of surviving features or `None` when it lost none), and `keep` /
        `mask` (output nodes, Spectral layers only).
        """
        out = []
        for entry in self.layers.values():
            changed = entry.keep is not None or entry.mask is not None
            if not changed and not any(f.pruned for f in entry.inputs):
                continue
            kept = [None if f.kept is None else int(f.kept.size) for f in entry.inputs]
            out.append(
                {
                    "layer": getattr(entry.layer, "name", None),
                    "rule": None if entry.rule is None else type(entry.rule).__name__,
                    "inputs_kept": kept,
                    "keep": None if entry.keep is None else [int(i) for i in entry.keep],
                    "mask": None if entry.mask is None else [int(i) for i in entry.mask],
                }
            )
        return out
