"""The eigenvalue-pretraining pipeline: eigenvalues only, prune, fine-tune the compact model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from spectral import Spectral, eigenvalue_pretraining
from spectral.graph import spectral_layers
from tests.support.spectral import COMPILE as BASE_COMPILE

# A fresh optimizer per compile (a dict, not a shared instance); eigenvalues need a bigger step.
COMPILE = {**BASE_COMPILE, "optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.02}}}


def _fresh_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((64,)),
            Spectral(40, activation="relu", use_bias=True),
            Spectral(30, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


class _Snapshot(keras.callbacks.Callback):
    """Records every Spectral base at the end of phase-1 training."""

    def __init__(self) -> None:
        super().__init__()
        self.bases: dict[str, np.ndarray] = {}
        self.eigenvalues: dict[str, np.ndarray] = {}

    def on_train_end(self, logs=None) -> None:
        for path, layer in spectral_layers(self.model):
            self.bases[path] = layer.return_base()
            self.eigenvalues[path] = layer.eigenvalues
        self.weights = [np.array(w) for w in self.model.get_weights()]


def test_eigenvalues_only_freezes_everything_else_in_phase_1(digits) -> None:
    x_train, y_train, _, _ = digits
    model = _fresh_model()
    snapshot = _Snapshot()
    eigenvalue_pretraining(
        model,
        {"x": x_train, "y": y_train, "epochs": 1, "batch_size": 64, "callbacks": [snapshot]},
        compile_dictionary=COMPILE,
        percentile=30,
        fine_tune_kwargs={"x": x_train, "y": y_train, "epochs": 1, "batch_size": 64},
        eigenvalues_only=True,
    )
    eigen_ids = {
        id(v) for _, layer in spectral_layers(model) for v in (layer.diag_start, layer.diag_end)
    }
    changed = [
        variable.path
        for variable, after in zip(model.weights, snapshot.weights, strict=True)
        if not np.array_equal(np.array(variable), after)
    ]
    # Only diag_end moved (diag_start is not trainable by default); the head and biases did not.
    assert changed and all(path.endswith("diag_end") for path in changed), changed
    assert all(id(v) in eigen_ids for v in model.weights if v.path in changed)


def test_pipeline_freezes_base_then_prunes_and_fine_tunes(digits) -> None:
    x_train, y_train, x_val, y_val = digits
    model = _fresh_model()
    initial = {p: layer.return_base() for p, layer in spectral_layers(model)}
    initial_eigs = {p: layer.eigenvalues for p, layer in spectral_layers(model)}
    snapshot = _Snapshot()
    calls: list[float] = []
    model_small, report = eigenvalue_pretraining(
        model,
        {"x": x_train, "y": y_train, "epochs": 3, "batch_size": 64, "callbacks": [snapshot]},
        compile_dictionary=COMPILE,
        percentile=50,
        eval_dictionary={"x": x_val, "y": y_val},
        fine_tune_kwargs={"x": x_train, "y": y_train, "epochs": 2, "batch_size": 64},
        progress=lambda f, m: calls.append(f),
    )
    for path, base in initial.items():
        np.testing.assert_array_equal(snapshot.bases[path], base)  # base frozen in phase 1
        assert not np.allclose(snapshot.eigenvalues[path], initial_eigs[path])  # eigs trained
        np.testing.assert_array_equal(dict(spectral_layers(model))[path].return_base(), base)
    assert report.method == "pretrain"
    assert report.to_dict()["method"] == "pretrain"
    assert report.scope == "layer"  # the pipeline's default: one cutoff per layer
    units = {p: layer.units for p, layer in spectral_layers(model_small)}
    before = report.units_before
    # Per layer, each layer keeps the nodes at or above its own median (ties may keep more).
    assert all(before[p] / 2 <= units[p] < before[p] for p in units if p in report.cutoff)
    first = next(iter(units))
    assert units[first] < 40
    assert units == report.units_after
    assert report.params_after == model_small.count_params() < model.count_params()
    assert report.metric_after is not None and report.metric_after > 0.5
    # The compact model's bases train again in the fine-tuning phase.
    assert all(layer.base.trainable for _, layer in spectral_layers(model_small))
    assert calls[0] == 0.0 and calls[-1] == 1.0 and calls == sorted(calls)


def test_pipeline_metric_search(digits) -> None:
    x_train, y_train, x_val, y_val = digits
    model_small, report = eigenvalue_pretraining(
        _fresh_model(),
        {"x": x_train, "y": y_train, "epochs": 2, "batch_size": 128},
        compile_dictionary=COMPILE,
        eval_dictionary={"x": x_val, "y": y_val},
        compare_metric="accuracy",
        max_delta_percent=20,
        percentile_step=20,
    )
    assert report.method == "pretrain"
    assert report.evaluations and report.percentile in (0, 20, 40, 60, 80, 100)


def test_pipeline_needs_a_way_to_compile(digits) -> None:
    x_train, y_train, _, _ = digits
    with pytest.raises(ValueError, match="compile_dictionary"):
        eigenvalue_pretraining(_fresh_model(), {"x": x_train, "y": y_train}, percentile=10)


def test_pipeline_reconstructs_the_compact_model_and_reports_it(digits) -> None:
    x_train, y_train, _, _ = digits
    _, report = eigenvalue_pretraining(
        _fresh_model(),
        {"x": x_train, "y": y_train, "epochs": 1, "batch_size": 128},
        compile_dictionary=COMPILE,
        percentile=50,
        calibration={"x": x_train[:300]},
        reconstruct="least_squares",
    )
    data = report.to_dict()
    assert data["method"] == "pretrain"
    assert report.reconstruction_method == "least_squares"
    assert report.calibration_rows == 300
    assert report.reconstruction_errors  # the consumers of removed nodes were re-fitted


def test_pipeline_recovers_with_distillation_from_the_pretrained_model(digits) -> None:
    x_train, y_train, _, _ = digits
    model_small, report = eigenvalue_pretraining(
        _fresh_model(),
        {"x": x_train, "y": y_train, "epochs": 1, "batch_size": 128},
        compile_dictionary=COMPILE,
        percentile=60,
        recover={"x": x_train[:300], "epochs": 1, "batch_size": 64},
        distill=True,
        temperature=3.0,
        steps=2,
    )
    assert report.recovery_epochs == 1
    assert report.distill is True and report.temperature == 3.0
    assert report.steps == 2 and len(report.rounds) == 2
    assert report.params_after == model_small.count_params()


class _FailOnTrain(keras.callbacks.Callback):
    def on_train_begin(self, logs=None) -> None:
        raise AssertionError("phase 1 started before the options were checked")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"reconstruct": "least_squares"}, "calibration"),
        ({"reconstruct": "cubic", "calibration": {"x": None}}, "reconstruct"),
        ({"distill": True}, "distill"),
        ({"temperature": 0}, "temperature"),
        ({"steps": 0}, "steps"),
        ({"recover": {"x": np.zeros((4, 64), "float32"), "epochs": 1}}, "recover"),
        ({"calibration": {"x": np.zeros((4, 7), "float32")}, "reconstruct": "mean"}, "width|7"),
    ],
)
def test_pipeline_checks_the_options_before_training(digits, options, match) -> None:
    x_train, y_train, _, _ = digits
    with pytest.raises(ValueError, match=match):
        eigenvalue_pretraining(
            _fresh_model(),
            {"x": x_train, "y": y_train, "epochs": 1, "callbacks": [_FailOnTrain()]},
            compile_dictionary=COMPILE,
            percentile=50,
            **options,
        )
