"""Upload validation end to end: policy checks, the sandboxed first load, metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import service.model_loading
from service.errors import ArtifactRejected
from service.model_loading import compile_config_from_archive, inspect_artifact
from service.model_policy import check_config
from service.settings import Settings
from tests.service.hostile.builders import fresh_copy
from tests.support.digits import build_digits_model, keras_bytes
from tests.support.uploads import lambda_model_bytes


def test_inspect_returns_shapes_params_and_spectral_units(digits_model_path: Path) -> None:
    meta = inspect_artifact(digits_model_path.read_bytes())
    assert meta["inputs"] == [{"name": "pixels", "shape": [None, 64], "dtype": "float32"}]
    assert meta["outputs"][0]["shape"] == [None, 10]
    assert [layer["units"] for layer in meta["spectral_layers"]] == [32, 16]
    assert meta["spectral_units"] == 48
    assert meta["param_count"] > 0
    # Recorded at upload, so no job has to open the artifact again to find it.
    assert meta["compile_config"] == {
        "loss": "sparse_categorical_crossentropy",
        "loss_weights": None,
        "metrics": ["accuracy"],
        "optimizer": meta["compile_config"]["optimizer"],
        "weighted_metrics": None,
    }
    assert meta["compile_config"]["optimizer"]["class_name"] == "Adam"


def test_uncompiled_models_record_no_compile_config() -> None:
    data = keras_bytes(build_digits_model(compiled=False))
    assert inspect_artifact(data)["compile_config"] is None
    assert compile_config_from_archive(data) is None
    assert compile_config_from_archive(b"not a zip") is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip at all", "not a zip"),
        (b"", "not a zip"),
    ],
)
def test_rejects_non_archives(data: bytes, message: str) -> None:
    with pytest.raises(ArtifactRejected, match=message):
        inspect_artifact(data)


def test_rejects_truncated_archive(digits_model_path: Path) -> None:
    data = digits_model_path.read_bytes()
    with pytest.raises(ArtifactRejected):
        inspect_artifact(data[: len(data) // 2])


def test_rejects_lambda_model(tmp_path: Path) -> None:
    with pytest.raises(ArtifactRejected, match="Lambda"):
        inspect_artifact(lambda_model_bytes(tmp_path))


def test_param_bombs_are_refused_before_any_load(digits_model_path: Path) -> None:
    # 2874 parameters: a limit of 2000 refuses it from the config alone, before the sandbox.
    with pytest.raises(ArtifactRejected, match=r"declares up to \d+ parameters; the limit is 2000"):
        inspect_artifact(digits_model_path.read_bytes(), Settings(max_params=2000))


def test_a_lonely_class_outside_the_list_is_refused() -> None:
    with pytest.raises(ArtifactRejected, match="module 'os'"):
        check_config({"module": "os", "class_name": "system", "config": {}})


def test_identical_bytes_load_in_the_sandbox_once_per_limits(
    model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[int] = []
    real = service.model_loading.load_in_sandbox

    def counting(data: bytes, request: Any, wall_s: float) -> dict[str, Any]:
        loads.append(request.max_params)
        return real(data, request, wall_s)

    monkeypatch.setattr(service.model_loading, "load_in_sandbox", counting)
    data = fresh_copy(model_bytes)
    first = inspect_artifact(data)
    first["inputs"].clear()  # callers own what they get: the cached verdict stays intact
    assert inspect_artifact(data)["inputs"][0]["shape"] == [None, 64]
    assert loads == [50_000_000]
    with pytest.raises(ArtifactRejected, match="limit is 2000"):
        inspect_artifact(data, Settings(max_params=2000))
    inspect_artifact(data, Settings(max_params=3000))
    assert loads == [50_000_000, 3000]
