"""The promotion gate: its arithmetic (`service.jobs.promotion`), the checks of ``promote`` at
submission, and what a job records of it."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from service.api.schemas import JobResult
from service.errors import InvalidInput
from service.jobs.params import PromoteSpec, PruneRequest
from service.jobs.promotion import decide, metric_drop
from service.jobs.submission import check_promotion, compiled_metric_names

COMPILED = {"optimizer": "adam", "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}


def _spec(**overrides: object) -> PromoteSpec:
    return PromoteSpec.model_validate({"alias": "production", "max_drop_percent": 1, **overrides})


@pytest.mark.parametrize(
    ("before", "after", "lower", "drop", "unit"),
    [
        (0.95, 0.94, False, 1.0, "points"),  # 0.95 - 0.94 is 0.0100000000000000089 in floats
        (0.95, 0.97, False, -2.0, "points"),
        (0.5, 0.4, True, -20.0, "%"),  # a loss that fell is no drop
        (0.5, 0.6, True, 20.0, "%"),
        (80.0, 76.0, False, 5.0, "%"),  # not in [0, 1]: relative
        (0.0, 0.0, True, 0.0, "%"),
        (0.0, 0.1, True, math.inf, "%"),
    ],
)
def test_metric_drop(before: float, after: float, lower: bool, drop: float, unit: str) -> None:
    assert metric_drop(before, after, lower_is_better=lower) == (drop, unit)


def test_gate_passes_within_the_budget_and_says_why() -> None:
    passed = decide(_spec(), 0.95, 0.94, lower_is_better=False)
    assert passed.promoted
    assert passed.reason == (
        "accuracy fell from 0.9500 to 0.9400: a drop of 1.00 points, within the budget of 1 points"
    )
    assert passed.to_dict() == {
        "alias": "production",
        "promoted": True,
        "reason": passed.reason,
        "metric": "accuracy",
        "metric_before": 0.95,
        "metric_after": 0.94,
        "max_drop_percent": 1.0,
    }
    # The dict is what GET /jobs/{id} answers under result.promotion.
    assert JobResult(model_id="m", version=2, promotion=passed.to_dict()).promotion is not None


def test_gate_refuses_over_the_budget_with_the_numbers() -> None:
    refused = decide(_spec(max_drop_percent=0), 0.9611, 0.7342, lower_is_better=False)
    assert not refused.promoted
    assert "0.9611" in refused.reason and "0.7342" in refused.reason
    assert "22.69 points" in refused.reason and "budget of 0 points" in refused.reason
    assert refused.reason.endswith("alias unchanged")
    loss = decide(_spec(metric="loss", max_drop_percent=5), 0.20, 0.22, lower_is_better=True)
    assert not loss.promoted and "loss rose" in loss.reason and "10.00 %" in loss.reason


@pytest.mark.parametrize(("before", "after"), [(None, 0.9), (0.9, None), (0.9, math.nan)])
def test_gate_refuses_what_it_could_not_measure(before: float | None, after: float | None) -> None:
    refused = decide(_spec(), before, after, lower_is_better=False, unmeasured="no such metric")
    assert not refused.promoted
    assert "could not be measured (no such metric)" in refused.reason
    assert refused.metric_after is None or refused.metric_after == 0.9
    # NaN never reaches the JSON of the job.
    assert all(
        value is None or math.isfinite(value)
        for value in (refused.metric_before, refused.metric_after)
    )


@pytest.mark.parametrize(
    ("promote", "message"),
    [
        ({"alias": "production"}, "max_drop_percent"),
        ({"alias": "production", "max_drop_percent": -1}, "greater than or equal to 0"),
        ({"alias": "production", "max_drop_percent": 101}, "less than or equal to 100"),
        ({"alias": "", "max_drop_percent": 1}, "at least 1 character"),
        ({"alias": "p", "max_drop_percent": 1, "threshold": 2}, "Extra inputs"),
    ],
)
def test_promote_body_is_validated(promote: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PruneRequest.model_validate(
            {"model_id": "m", "percentile": 50, "dataset_id": "d", "promote": promote}
        )


def test_promote_is_recorded_and_fingerprinted() -> None:
    body = {"model_id": "m", "percentile": 50, "dataset_id": "d"}
    plain = PruneRequest.model_validate(body)
    gated = PruneRequest.model_validate({**body, "promote": {"alias": "p", "max_drop_percent": 1}})
    other = PruneRequest.model_validate({**body, "promote": {"alias": "p", "max_drop_percent": 2}})
    assert len({plain.fingerprint(), gated.fingerprint(), other.fingerprint()}) == 3
    assert gated.params().recorded()["promote"] == {
        "alias": "p",
        "max_drop_percent": 1.0,
        "metric": "accuracy",
    }
    assert "promote" not in plain.params().recorded()


def test_check_promotion_at_submission() -> None:
    check_promotion(_spec(), "ds_1", COMPILED)
    check_promotion(_spec(metric="loss"), "ds_1", COMPILED)
    with pytest.raises(InvalidInput, match="promote needs dataset_id"):
        check_promotion(_spec(), None, COMPILED)
    with pytest.raises(InvalidInput, match="Invalid promote.alias 'Prod!'"):
        check_promotion(_spec(alias="Prod!"), "ds_1", COMPILED)
    with pytest.raises(InvalidInput, match=r"Available: \['accuracy', 'loss'\]. Received: 'auc'"):
        check_promotion(_spec(metric="auc"), "ds_1", COMPILED)


def test_compiled_metric_names_read_every_form() -> None:
    serialized = {"class_name": "AUC", "config": {"name": "auc"}, "module": "keras.metrics"}
    config = {
        "metrics": {"digits": ["accuracy", serialized], "aux": [["mae"]]},
        "weighted_metrics": ["mse"],
    }
    assert compiled_metric_names(config) == {"accuracy", "auc", "mae", "mse"}
    assert compiled_metric_names(None) == set()
    # Multi-output models report "<output>_<metric>".
    check_promotion(_spec(metric="digits_accuracy"), "ds_1", config)
