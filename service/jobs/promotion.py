"""The promotion gate of a job: whether a metric's drop fits the budget, and why, in words.

The worker measures the metric before (the parent version) and after (the new version) on the
job's dataset and asks `decide`; when it passes, the registry moves the alias in the transaction
that records the version (`Registry.add_version(promote_alias=...)`). Pure arithmetic here: no
TensorFlow, no database.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from service.jobs.params import PromoteSpec

# A drop computed in floating point (0.95 - 0.94 = 0.01000000000000001) must not fail a budget
# it meets exactly.
_DIGITS = 9


@dataclass(frozen=True)
class PromotionDecision:
    """The gate's outcome, as `GET /jobs/{id}` shows it under ``result.promotion``."""

    alias: str
    promoted: bool
    reason: str
    metric: str
    metric_before: float | None
    metric_after: float | None
    max_drop_percent: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_drop(before: float, after: float, *, lower_is_better: bool) -> tuple[float, str]:
    """How much worse ``after`` is than ``before``, in percent, and the unit it is in.

    Percentage points for a higher-is-better metric with both values in [0, 1] (accuracy);
    otherwise the relative change in percent (for a loss, its relative increase). Negative when
    the metric improved.
    """
    worse = after - before if lower_is_better else before - after
    if not lower_is_better and 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0:
        return round(worse * 100.0, _DIGITS), "points"
    if before == 0.0:
        return (0.0 if worse <= 0 else math.inf), "%"
    return round(worse / abs(before) * 100.0, _DIGITS), "%"


def decide(
    spec: PromoteSpec,
    before: float | None,
    after: float | None,
    *,
    lower_is_better: bool,
    unmeasured: str | None = None,
) -> PromotionDecision:
    """Whether the alias may move: the drop of ``spec.metric`` is at most the budget.

    Args:
        before, after: The metric of the parent and the new version on the job's dataset
            (None, or not finite: it could not be measured, and the gate refuses).
        lower_is_better: The metric's direction (losses and errors: True).
        unmeasured: Why the metric could not be measured, for the reason.
    """

    def outcome(promoted: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(
            alias=spec.alias,
            promoted=promoted,
            reason=reason,
            metric=spec.metric,
            metric_before=before if before is not None and math.isfinite(before) else None,
            metric_after=after if after is not None and math.isfinite(after) else None,
            max_drop_percent=spec.max_drop_percent,
        )

    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        why = unmeasured or f"before={before}, after={after}"
        return outcome(False, f"{spec.metric} could not be measured ({why}); alias unchanged")
    drop, unit = metric_drop(before, after, lower_is_better=lower_is_better)
    moved = "rose" if (after > before) else "fell" if after < before else "stayed"
    change = f"{spec.metric} {moved} from {before:.4f} to {after:.4f}"
    budget = f"the budget of {spec.max_drop_percent:g} {unit}"
    if drop <= spec.max_drop_percent:
        return outcome(True, f"{change}: a drop of {max(drop, 0.0):.2f} {unit}, within {budget}")
    return outcome(False, f"{change}: a drop of {drop:.2f} {unit}, over {budget}; alias unchanged")
