"""The promotion gate through a real API server and a real Celery worker (embedded broker and
SQLite, as `spectral serve` runs): a job within its budget moves the alias in the transaction
that records its version, one over it leaves the alias where it was and says why."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.api.schemas import AliasHistoryPublic, JobPublic
from tests.support.http import predict, submit_ok, upload_dataset, upload_model, wait_for
from tests.support.worker import RunningWorker

pytestmark = pytest.mark.timeout(400)


def _alias(api: str, name: str) -> int | None:
    return httpx.get(f"{api}/models/{name}", timeout=30).json()["aliases"].get("production")


def _history(api: str, name: str) -> list[tuple[object, ...]]:
    response = httpx.get(f"{api}/models/{name}/aliases/production/history", timeout=30)
    assert response.status_code == 200, response.text
    events = AliasHistoryPublic.model_validate(response.json()).data
    return [(e.from_version, e.to_version, e.reason, e.job_id) for e in events]


def test_promotion_gate_end_to_end(
    job_env: dict[str, str],
    start_api: Callable[..., str],
    start_worker: Callable[..., RunningWorker],
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
) -> None:
    api = start_api(job_env)
    start_worker(job_env, wait=False)  # warms up while the test uploads
    x, y = digits_data
    x, y = x[:400], y[:400]
    name = f"digits-{uuid.uuid4().hex[:8]}"
    upload_model(api, name, digits_model_path)
    dataset_id = upload_dataset(api, x, y)
    put = httpx.put(f"{api}/models/{name}/aliases/production", json={"version": 1}, timeout=30)
    assert put.status_code == 200, put.text

    # Within the budget: the alias moves to the new version, and its history names the job.
    passing = submit_ok(
        api,
        {
            "model_id": name,
            "percentile": 20,
            "dataset_id": dataset_id,
            "promote": {"alias": "production", "max_drop_percent": 5},
        },
    )
    job = JobPublic.model_validate(wait_for(api, passing))
    assert job.status == "succeeded", job.error
    assert job.result is not None and job.result.version == 2
    promotion = job.result.promotion
    assert promotion is not None and promotion.promoted, promotion
    assert (promotion.alias, promotion.metric, promotion.max_drop_percent) == (
        "production",
        "accuracy",
        5.0,
    )
    # The gate compared the very numbers the report measured on the dataset.
    assert job.report is not None
    assert promotion.metric_before == job.report["metric_before"]
    assert promotion.metric_after == job.report["metric_after"]
    assert "within the budget of 5 points" in promotion.reason
    assert _alias(api, name) == 2
    assert _history(api, name) == [(1, 2, "promotion", passing), (None, 1, "set", None)]
    # The gate is not how the version was made: the lineage leaves it out.
    lineage = httpx.get(f"{api}/models/{name}/versions/2", timeout=30).json()["lineage"]
    assert lineage["job_id"] == passing and "promote" not in lineage["params"]

    # Over the budget (none allowed, most nodes removed): the alias stays, the reason says why.
    # The job compares loss, so the gate evaluates both stored versions itself.
    failing = submit_ok(
        api,
        {
            "model_id": name,
            "version": 1,
            "percentile": 95,
            "dataset_id": dataset_id,
            "compare_metric": "loss",
            "promote": {"alias": "production", "max_drop_percent": 0},
        },
    )
    job = JobPublic.model_validate(wait_for(api, failing))
    assert job.status == "succeeded", job.error
    assert job.result is not None and job.result.version == 3
    refused = job.result.promotion
    assert refused is not None and not refused.promoted, refused
    assert refused.metric_before is not None and refused.metric_after is not None
    # Its numbers are the accuracy of versions 1 and 3 on the dataset, as served.
    for version, measured in ((1, refused.metric_before), (3, refused.metric_after)):
        served = float(np.mean(predict(api, name, version, x).argmax(axis=1) == y))
        assert measured == pytest.approx(served, abs=1e-6)
    assert refused.metric_after < refused.metric_before
    drop = (refused.metric_before - refused.metric_after) * 100
    assert f"a drop of {drop:.2f} points, over the budget of 0 points" in refused.reason
    assert f"{refused.metric_before:.4f}" in refused.reason
    assert refused.reason.endswith("alias unchanged")
    assert _alias(api, name) == 2
    assert len(_history(api, name)) == 2

    # A pipeline that saw the promoted version go bad rolls it back.
    back = httpx.post(
        f"{api}/models/{name}/aliases/production/rollback", json={"if_version": 2}, timeout=30
    )
    assert back.status_code == 200 and back.json()["version"] == 1, back.text
    assert _history(api, name)[0] == (2, 1, "rollback", None)
