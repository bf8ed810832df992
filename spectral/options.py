"""The options that turn plain pruning into compression: reconstruction, recovery, rounds.

`prune`, `prune_percentile`, `metric_based_pruning` and `eigenvalue_pretraining` take the same
keyword options; this module validates them once, with messages that name the argument and what
was received, and holds them as one `CompressionOptions` value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import keras
import numpy as np

from spectral.calibration import count_rows, label_rows, model_rows, reject_stream

RECONSTRUCT_METHODS = ("least_squares", "mean")
RECOVER_KEYS = ("x", "y", "epochs", "batch_size")


@dataclass(frozen=True)
class Recovery:
    """Brief training after compaction: `recover={"x", "y", "epochs", "batch_size"}`."""

    x: Any
    y: Any
    epochs: int
    batch_size: int | None


@dataclass(frozen=True)
class CompressionOptions:
    """What happens after the nodes are chosen, beyond exact slicing.

    Args:
        calibration_x: Calibration inputs for reconstruction, or `None`.
        reconstruct: `"least_squares"`, `"mean"` or `None` (exact folding only).
        recovery: Recovery training settings, or `None`.
        distill: Whether recovery trains on the unpruned model's outputs too.
        temperature: Distillation temperature.
        steps: Rounds the removal is spread over.
    """

    calibration_x: Any = None
    reconstruct: str | None = None
    recovery: Recovery | None = None
    distill: bool = False
    temperature: float = 2.0
    steps: int = 1

    @property
    def exact(self) -> bool:
        """Whether the result is exactly the masked model (no reconstruction, no training)."""
        return self.reconstruct is None and self.recovery is None

    @property
    def calibration_rows(self) -> int | None:
        return None if self.calibration_x is None else count_rows(self.calibration_x)


def _describe(value: Any) -> str:
    # Arrays would flood the message: name their shape instead.
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    if hasattr(value, "shape"):
        return f"<{type(value).__name__} of shape {tuple(value.shape)}>"
    if isinstance(value, list | tuple) and len(value) > 4:
        return f"<{type(value).__name__} of {len(value)} items>"
    return repr(value)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def _check_calibration(calibration: Any) -> Any:
    if calibration is None:
        return None
    if not isinstance(calibration, Mapping) or set(calibration) != {"x"}:
        raise ValueError(
            "`calibration` must be a dict with exactly one entry, `x` (calibration inputs). "
            f"Received: calibration={_describe(calibration)}"
        )
    if calibration["x"] is None:
        raise ValueError(
            "`calibration['x']` must hold calibration inputs. "
            f"Received: calibration={_describe(calibration)}"
        )
    reject_stream(calibration["x"], "calibration['x']")
    return calibration["x"]


def _check_recover(recover: Any, distill: bool) -> Recovery | None:
    if recover is None:
        return None
    if not isinstance(recover, Mapping):
        raise ValueError(
            '`recover` must be a dict {"x", "y", "epochs", "batch_size"}. '
            f"Received: recover={_describe(recover)}"
        )
    for key in ("x", "y"):
        reject_stream(recover.get(key), f"recover[{key!r}]")
    unknown = sorted(set(recover) - set(RECOVER_KEYS))
    if unknown:
        raise ValueError(
            f"`recover` takes the keys {list(RECOVER_KEYS)}; unknown: {unknown}. "
            f"Received: recover={_describe(recover)}"
        )
    missing = [key for key in ("x", "epochs") if recover.get(key) is None]
    if recover.get("y") is None and not distill:
        missing.append("y")
    if missing:
        hint = " (`y` may be left out with distill=True)" if "y" in missing else ""
        raise ValueError(
            f"`recover` needs {missing}{hint}. Received: recover={_describe(recover)}, "
            f"distill={distill!r}"
        )
    batch_size = recover.get("batch_size")
    return Recovery(
        x=recover["x"],
        y=recover.get("y"),
        epochs=_positive_int(recover["epochs"], "recover['epochs']"),
        batch_size=None
        if batch_size is None
        else _positive_int(batch_size, "recover['batch_size']"),
    )


def check_options(
    *,
    calibration: Any = None,
    reconstruct: Any = None,
    recover: Any = None,
    distill: Any = False,
    temperature: Any = 2.0,
    steps: Any = 1,
    compact: bool = True,
) -> CompressionOptions:
    """Validates the compression options of `prune` and friends.

    Raises:
        ValueError: On any invalid option or combination; the message names the argument
            and what was received.
    """
    if reconstruct is not None and reconstruct not in RECONSTRUCT_METHODS:
        raise ValueError(
            f"`reconstruct` must be None or one of {RECONSTRUCT_METHODS}. "
            f"Received: reconstruct={reconstruct!r}"
        )
    x = _check_calibration(calibration)
    if reconstruct is not None and x is None:
        raise ValueError(
            "`reconstruct` re-fits layers on calibration rows: pass calibration={'x': ...}. "
            f"Received: reconstruct={reconstruct!r}, calibration=None"
        )
    if reconstruct is None and x is not None:
        raise ValueError(
            "`calibration` is only used by reconstruction: pass reconstruct='least_squares' "
            "or 'mean', or leave calibration out. Received: reconstruct=None"
        )
    if not isinstance(distill, bool):
        raise ValueError(f"`distill` must be True or False. Received: distill={distill!r}")
    if distill and recover is None:
        raise ValueError(
            "`distill=True` distills during recovery training: pass recover={...}. "
            "Received: distill=True, recover=None"
        )
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float | np.number)
        or not math.isfinite(float(temperature))
        or temperature <= 0
    ):
        raise ValueError(
            f"`temperature` must be a number > 0. Received: temperature={temperature!r}"
        )
    steps = _positive_int(steps, "steps")
    recovery = _check_recover(recover, distill)
    if not compact and (reconstruct is not None or recovery is not None or steps > 1):
        raise ValueError(
            "`reconstruct`, `recover` and `steps` > 1 work on the compact model. Received: "
            f"compact=False, reconstruct={reconstruct!r}, recover={_describe(recover)}, "
            f"steps={steps}"
        )
    return CompressionOptions(
        calibration_x=x,
        reconstruct=reconstruct,
        recovery=recovery,
        distill=distill,
        temperature=float(temperature),
        steps=steps,
    )


def check_data(options: CompressionOptions, model: keras.Model) -> CompressionOptions:
    """`options` with its calibration and recovery rows checked against `model`'s inputs.

    The rows come back as arrays of the inputs' dtype (`spectral.calibration.model_rows`).

    Raises:
        TypeError: If rows are a dataset or generator, not numeric, or not shaped like the
            model's inputs (list/dict for several inputs).
        ValueError: If rows have the wrong feature width, none at all, NaN or infinite values,
            or labels whose row count differs from the inputs'.
    """
    calibration_x = options.calibration_x
    if calibration_x is not None:
        calibration_x = model_rows(model, calibration_x, "calibration['x']")
    recovery = options.recovery
    if recovery is not None:
        x = model_rows(model, recovery.x, "recover['x']")
        y = None if recovery.y is None else label_rows(recovery.y, count_rows(x), "recover['y']")
        recovery = replace(recovery, x=x, y=y)
    return replace(options, calibration_x=calibration_x, recovery=recovery)
