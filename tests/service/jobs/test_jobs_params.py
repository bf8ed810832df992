"""`PruneParams` / `PruneRequest`: validation, the one set of defaults, what a job records."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.errors import CompileConfigMissing
from service.jobs.params import PruneParams, PruneRequest
from service.settings import Settings


def _request(**overrides: object) -> PruneRequest:
    body = {"model_id": "digits", "method": "percentile", "percentile": 40.0, **overrides}
    return PruneRequest.model_validate(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"percentile": 150}, "less than or equal to 100"),
        ({"percentile": -1}, "greater than or equal to 0"),
        ({"percentile": None}, "needs a percentile"),
        ({"method": "metric", "percentile": None}, "needs a dataset_id"),
        ({"method": "pretrain"}, "needs a dataset_id"),
        ({"version": 1, "alias": "prod"}, "either version or alias"),
        ({"compile": {"optimizer": "adam", "run_eagerly": True}}, "run_eagerly"),
        ({"scope": "model"}, "'global' or 'layer'"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_prune_request_rejects_bad_bodies(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _request(**body)


def test_recorded_params_keep_what_the_method_uses() -> None:
    metric = _request(method="metric", percentile=None, dataset_id="ds_1").params().recorded()
    assert {"max_delta_percent", "percentile_step", "compare_metric"} <= set(metric)
    assert "epochs" not in metric
    pretrain = _request(method="pretrain", dataset_id="ds_1", epochs=7).params().recorded()
    assert pretrain["epochs"] == 7 and "percentile_step" not in pretrain
    assert _request().params().recorded() == {
        "method": "percentile",
        "percentile": 40.0,
        "batch_size": 32,
        "scope": "global",
        "min_units": 1,
    }


def test_recorded_params_read_back_to_the_same_params() -> None:
    # The worker types the stored dict again: defaults come back from the class, not a copy.
    for request in (
        _request(),
        _request(method="metric", percentile=None, dataset_id="ds_1", max_delta_percent=3),
        _request(method="pretrain", dataset_id="ds_1", epochs=7, eigenvalues_only=True),
    ):
        params = request.params()
        assert PruneParams.model_validate(params.recorded()) == params


def test_scope_defaults_per_method() -> None:
    assert _request(method="pretrain", dataset_id="ds_1").params().scope == "layer"
    assert _request(method="metric", percentile=None, dataset_id="ds_1").scope == "global"
    assert _request(method="pretrain", dataset_id="ds_1", scope="global").scope == "global"


def test_compile_config_is_required_only_to_evaluate_a_dataset() -> None:
    saved = {"loss": "mse"}
    given = {"loss": "mae", "metrics": ["accuracy"]}
    assert _request().compile_for(None, "m v1") is None
    assert _request().compile_for(saved, "m v1") == saved
    assert _request(dataset_id="ds_1", compile=given).compile_for(None, "m v1") == given
    with pytest.raises(CompileConfigMissing, match="m v1 was saved without a compile config"):
        _request(dataset_id="ds_1").compile_for(None, "m v1")


def test_queue_routes_by_method() -> None:
    settings = Settings(queue_routes={"metric": "gpu"}, default_queue="cpu")
    assert settings.queue_for("metric") == "gpu"
    assert settings.queue_for("percentile") == "cpu"
    assert settings.all_queues == ["cpu", "gpu"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"reconstruct": "mean"}, "pass calibration_dataset or dataset_id"),
        ({"reconstruct": "svd", "dataset_id": "ds_1"}, "'least_squares' or 'mean'"),
        ({"calibration_dataset": "ds_1"}, "calibration_dataset is only used by reconstruct"),
        ({"recover_epochs": 2}, "pass recover_dataset or dataset_id"),
        ({"recover_epochs": 0, "dataset_id": "ds_1"}, "greater than or equal to 1"),
        ({"recover_dataset": "ds_1"}, "recover_dataset is only used by recovery"),
        ({"distill": True, "dataset_id": "ds_1"}, "distill .* set recover_epochs"),
        ({"temperature": 3.0}, "temperature is only used by distill"),
        ({"temperature": 0, "distill": True, "recover_epochs": 1, "dataset_id": "d"}, "greater"),
        ({"steps": 0}, "greater than or equal to 1"),
        ({"method": "pretrain", "dataset_id": "d", "temperature": 3.0}, "only used by distill"),
        ({"method": "pretrain", "dataset_id": "d", "recover_dataset": "r"}, "only used by"),
    ],
)
def test_compression_options_are_checked(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _request(**body)


def test_compression_datasets_default_to_the_jobs_dataset() -> None:
    params = _request(dataset_id="ds_1", reconstruct="least_squares", recover_epochs=3).params()
    assert (params.calibration_dataset, params.recover_dataset) == ("ds_1", "ds_1")
    assert params.dataset_ids == ["ds_1"]
    own = _request(
        reconstruct="mean",
        calibration_dataset="ds_c",
        recover_epochs=1,
        recover_dataset="ds_r",
        distill=True,
        temperature=4.0,
        steps=3,
    ).params()
    assert own.dataset_ids == ["ds_c", "ds_r"]
    recorded = own.recorded()
    assert {
        key: recorded[key]
        for key in (
            "reconstruct",
            "calibration_dataset",
            "recover_epochs",
            "recover_dataset",
            "distill",
            "temperature",
            "steps",
        )
    } == {
        "reconstruct": "mean",
        "calibration_dataset": "ds_c",
        "recover_epochs": 1,
        "recover_dataset": "ds_r",
        "distill": True,
        "temperature": 4.0,
        "steps": 3,
    }
    assert PruneParams.model_validate(recorded) == own


def test_recovery_needs_a_compile_config() -> None:
    with pytest.raises(CompileConfigMissing, match="evaluated or trained on"):
        _request(recover_epochs=2, recover_dataset="ds_r").compile_for(None, "m v1")


def test_pretrain_takes_the_compression_options() -> None:
    params = _request(
        method="pretrain",
        dataset_id="ds_1",
        reconstruct="mean",
        calibration_dataset="ds_c",
        recover_epochs=2,
        distill=True,
        temperature=4.0,
        steps=2,
    ).params()
    assert params.dataset_ids == ["ds_1", "ds_c"]
    recorded = params.recorded()
    assert recorded["method"] == "pretrain" and recorded["epochs"] == 5
    assert {key: recorded[key] for key in ("reconstruct", "calibration_dataset", "steps")} == {
        "reconstruct": "mean",
        "calibration_dataset": "ds_c",
        "steps": 2,
    }
    assert (recorded["recover_epochs"], recorded["recover_dataset"]) == (2, "ds_1")
    assert (recorded["distill"], recorded["temperature"]) == (True, 4.0)
    assert PruneParams.model_validate(recorded) == params
