"""Rules for layers that absorb removed inputs: affine maps of their input (Dense, Spectral).

Removing input feature i deletes row i of the kernel; the removed feature's constant times that
row is the same for every example, so it moves into the bias. These layers are also what
reconstruction re-fits, through `linear_map`, `held_entries` and `set_linear_map`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spectral.activations import rest_value
from spectral.layer import Spectral, to_numpy
from spectral.plan import UNTOUCHED, Features, LayerPlan
from spectral.rules.base import ConsumerRule, LayerCall, fold, weights_by_name

# A Spectral kernel entry whose eigenvalue difference is below this fraction of the layer's
# largest one cannot be set through `base` without blowing `base` up; it keeps its old value.
EIGENVALUE_GAP_TOLERANCE = 1e-6


class LinearRule(ConsumerRule):
    """A single-input layer computing `act(x @ kernel + bias)` on the last axis.

    Subclasses say where the kernel lives (`kernel`) and how the clone's weights are built.
    """

    absorbs = True

    def supports(self, call: LayerCall) -> bool:
        return len(call.inputs) == 1

    def propagate(self, call: LayerCall) -> Features:
        return UNTOUCHED

    def kernel(self, layer: Any) -> np.ndarray:
        """The layer's direct-space kernel `(in, out)`, in the layer's dtype."""
        raise NotImplementedError(f"{type(self).__name__} does not implement `kernel`.")

    def bias_fold(self, layer: Any, plan: LayerPlan) -> np.ndarray | None:
        return fold(plan.inputs[0] if plan.inputs else None, self.kernel(layer))

    def clone_config(self, layer: Any, plan: LayerPlan, config: dict[str, Any]) -> dict[str, Any]:
        # A layer without a bias needs one to carry the removed inputs' constants.
        if plan.inputs and not getattr(layer, "use_bias", True):
            if self.bias_fold(layer, plan) is not None:
                config = {**config, "use_bias": True}
        return config

    def linear_map(self, layer: Any) -> tuple[np.ndarray, np.ndarray | None]:
        bias = None if layer.bias is None else to_numpy(layer.bias).astype(np.float64)
        return self.kernel(layer).astype(np.float64), bias


def _with_fold(bias: np.ndarray, delta: np.ndarray | None) -> np.ndarray:
    if delta is None:
        return bias
    return (bias.astype(np.float64) + delta).astype(bias.dtype)


def _assign_bias(layer: Any, bias: np.ndarray | None) -> None:
    if bias is None:
        return
    if layer.bias is None:
        if np.any(bias != 0.0):
            raise ValueError(
                f"Layer '{layer.name}' has no bias to set. Received: a non-zero bias of shape "
                f"{bias.shape}"
            )
        return
    layer.bias.assign(bias.astype(layer.bias.dtype))


class DenseRule(LinearRule):
    """`Dense`: kernel rows of removed inputs are sliced away, their constants go to the bias."""

    def kernel(self, layer: Any) -> np.ndarray:
        return to_numpy(layer.kernel)

    def slice_weights(self, layer: Any, plan: LayerPlan) -> dict[str, np.ndarray] | None:
        feat = plan.inputs[0] if plan.inputs else None
        if feat is None or feat.kept is None:
            return None
        w = weights_by_name(layer)
        kernel = w["kernel"]
        bias = w.get("bias", np.zeros(kernel.shape[1], dtype=kernel.dtype))
        return {"kernel": kernel[feat.kept], "bias": _with_fold(bias, fold(feat, kernel))}

    def set_linear_map(self, layer: Any, kernel: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        layer.kernel.assign(np.asarray(kernel).astype(layer.kernel.dtype))
        _assign_bias(layer, bias)
        return np.zeros(np.shape(kernel), dtype=bool)


def mask_nodes(
    base: np.ndarray, diag_end: np.ndarray, bias: np.ndarray | None, kept: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Copies of a Spectral layer's weights with every node outside `kept` masked.

    A masked node has its incoming `base` column, its eigenvalue and its bias set to zero, so
    it outputs the constant act(0). This is the one definition of masking; the masked model
    that compaction must reproduce, and the masked fallback inside compaction, both use it.
    """
    zero = np.setdiff1d(np.arange(base.shape[1]), kept)
    base, diag_end = base.copy(), diag_end.copy()
    base[:, zero] = 0.0
    diag_end[:, zero] = 0.0
    if bias is not None:
        bias = bias.copy()
        bias[zero] = 0.0
    return base, diag_end, bias


class SpectralRule(LinearRule):
    """`Spectral`: the source of pruning and a consumer of it.

    As a consumer its `base` and `diag_start` rows of removed inputs go, with the constants
    folded into its bias. As a source it keeps the output nodes in `plan.keep` (slicing `base`
    columns, `diag_end` and `bias`) or zeroes the others when it is masked (`plan.mask`).
    Subclasses of `Spectral` use this rule too.
    """

    inherit = True

    def propagate(self, call: LayerCall) -> Features:
        layer, keep = call.layer, call.plan.keep
        if keep is None:
            return UNTOUCHED
        const = rest_value(layer.activation, layer.units)
        return Features(kept=keep, const=const, sources=frozenset({id(layer)}))

    def kernel(self, layer: Any) -> np.ndarray:
        w = weights_by_name(layer)
        return w["base"] * (w["diag_start"] - w["diag_end"])

    def clone_config(self, layer: Any, plan: LayerPlan, config: dict[str, Any]) -> dict[str, Any]:
        config = super().clone_config(layer, plan, config)
        if plan.keep is not None:
            config = {**config, "units": len(plan.keep)}
        return config

    def slice_weights(self, layer: Spectral, plan: LayerPlan) -> dict[str, np.ndarray] | None:
        w = weights_by_name(layer)
        base, diag_start, diag_end = w["base"], w["diag_start"], w["diag_end"]
        bias = w.get("bias", np.zeros(layer.units, dtype=base.dtype))
        feat = plan.inputs[0] if plan.inputs else None
        bias = _with_fold(bias, fold(feat, base * (diag_start - diag_end)))
        if feat is not None and feat.kept is not None:
            base, diag_start = base[feat.kept], diag_start[feat.kept]
        if plan.mask is not None:
            base, diag_end, masked_bias = mask_nodes(base, diag_end, bias, plan.mask)
            assert masked_bias is not None
            bias = masked_bias
        if plan.keep is not None:
            base, diag_end, bias = base[:, plan.keep], diag_end[:, plan.keep], bias[plan.keep]
        return {"base": base, "diag_start": diag_start, "diag_end": diag_end, "bias": bias}

    def held_entries(self, layer: Any) -> np.ndarray:
        """Kernel entries whose `diag_start - diag_end` is ~0: no finite `base` changes them.

        "~0" is below `EIGENVALUE_GAP_TOLERANCE` of the layer's largest gap magnitude.
        """
        w = weights_by_name(layer)
        gap = np.abs((w["diag_start"] - w["diag_end"]).astype(np.float64))
        scale = float(np.max(gap)) if gap.size else 0.0
        return gap <= EIGENVALUE_GAP_TOLERANCE * scale

    def set_linear_map(self, layer: Any, kernel: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """Solves `kernel = base * (diag_start - diag_end)` for `base`; eigenvalues stay fixed.

        Where `held_entries` says the gap is ~0, `base` keeps its old value.
        """
        w = weights_by_name(layer)
        gap = (w["diag_start"] - w["diag_end"]).astype(np.float64)
        held = self.held_entries(layer)
        safe = np.where(held, 1.0, gap)
        base = np.where(held, w["base"], np.asarray(kernel, dtype=np.float64) / safe)
        layer.base.assign(base.astype(w["base"].dtype))
        _assign_bias(layer, bias)
        return held
