"""The compression options of `prune`, `prune_percentile` and `metric_based_pruning`:
reconstruction (also inside the metric search), recovery training with and without
distillation, gradual rounds, what the report records, progress and cancellation, and
argument validation."""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest

from spectral import Spectral, metric_based_pruning, prune, prune_percentile
from spectral.applying import round_percentiles
from spectral.graph import spectral_layers
from spectral.search import within_budget
from tests.support.spectral import COMPILE, randomize


def _model() -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((8,)),
            Spectral(24, activation="tanh", use_bias=True),
            Spectral(16, activation="relu", use_bias=True),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    return randomize(model, seed=7)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(8)
    return rng.normal(size=(256, 8)).astype("float32"), rng.integers(0, 3, size=256)


def _relative_output_error(model: keras.Model, small: keras.Model, x: np.ndarray) -> float:
    want = model.predict(x, verbose=0)
    got = small.predict(x, verbose=0)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_default_options_keep_the_exact_result_and_report_nothing_extra(data) -> None:
    x, _ = data
    model = _model()
    small, report = prune(model, percentile=60)
    masked = prune(model, percentile=60, compact=False).model
    np.testing.assert_allclose(small.predict(x, verbose=0), masked.predict(x, verbose=0), atol=1e-5)
    out = report.to_dict()
    assert out["reconstruction_method"] is None and out["calibration_rows"] is None
    assert out["reconstruction_errors"] == {} and out["reconstruction_fallbacks"] == {}
    assert out["recovery_epochs"] is None and out["distill"] is False
    assert out["temperature"] is None and out["steps"] == 1 and out["rounds"] == []


@pytest.mark.parametrize("method", ["least_squares", "mean"])
def test_reconstruction_through_prune_percentile_moves_closer_to_the_original(data, method) -> None:
    x, _ = data
    model = _model()
    exact = prune_percentile(model, 60)
    small = prune_percentile(model, 60, calibration={"x": x}, reconstruct=method)
    assert small.count_params() == exact.count_params()
    assert _relative_output_error(model, small, x) < _relative_output_error(model, exact, x)


def test_report_records_reconstruction(data) -> None:
    x, _ = data
    model = _model()
    _, report = prune(model, percentile=60, calibration={"x": x[:200]}, reconstruct="least_squares")
    assert report.reconstruction_method == "least_squares"
    assert report.calibration_rows == 200
    first, second = (path for path, _ in spectral_layers(model))
    dense = model.layers[-1].name
    # Both consumers of removed nodes are re-fitted, each closer to the original.
    assert set(report.reconstruction_errors) == {second, dense}
    for pair in report.reconstruction_errors.values():
        assert pair["after"] < pair["before"]
    assert report.reconstruction_fallbacks == {}
    out = json.loads(json.dumps(report.to_dict()))
    assert out["reconstruction_errors"][dense]["after"] == pytest.approx(
        report.reconstruction_errors[dense]["after"]
    )
    assert out["calibration_rows"] == 200 and first not in out["reconstruction_errors"]


def test_search_with_reconstruction_prunes_more_within_the_same_budget(
    trained_model, digits
) -> None:
    x_train, _, x_val, y_val = digits
    kwargs = {
        "eval_dictionary": {"x": x_val, "y": y_val},
        "compile_dictionary": COMPILE,
        "max_delta_percent": 2,
        "percentile_step": 10,
    }
    _, plain = prune(trained_model, **kwargs)
    small, rebuilt = prune(
        trained_model, calibration={"x": x_train[:1000]}, reconstruct="least_squares", **kwargs
    )
    assert rebuilt.nodes_removed_fraction > plain.nodes_removed_fraction
    assert rebuilt.percentile > plain.percentile
    assert rebuilt.reconstruction_method == "least_squares"
    assert within_budget(rebuilt.metric_after, rebuilt.metric_before, "accuracy", 2)
    # The trace is of reconstructed models: the chosen point's value is the returned model's.
    chosen = next(e for e in rebuilt.evaluations if e["percentile"] == rebuilt.percentile)
    assert chosen["value"] == pytest.approx(rebuilt.metric_after, abs=1e-6)
    assert small.count_params() < trained_model.count_params()


def test_metric_based_pruning_takes_the_options(data) -> None:
    x, y = data
    model = _model()
    model.compile(**COMPILE)
    small = metric_based_pruning(
        model,
        {"x": x, "y": y},
        COMPILE,
        "loss",
        max_delta_percent=50,
        percentile_step=25,
        calibration={"x": x},
        reconstruct="mean",
        recover={"x": x, "y": y, "epochs": 1, "batch_size": 32},
    )
    assert small.compiled
    history = small.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_round_percentiles_remove_the_target_in_equal_shares() -> None:
    assert round_percentiles(60, 1) == [60]
    shares = round_percentiles(60, 3)
    np.testing.assert_allclose(shares, [20.0, 25.0, 100.0 / 3.0])
    left = np.prod([1 - q / 100 for q in shares])
    assert left == pytest.approx(0.4)
    assert round_percentiles(100, 2) == [50.0, 100.0]
    assert round_percentiles(0, 4) == [0.0] * 4


def test_gradual_steps_prune_in_rounds(data) -> None:
    x, y = data
    model = _model()
    small, report = prune(
        model,
        percentile=60,
        scope="layer",
        compile_dictionary=COMPILE,
        calibration={"x": x},
        reconstruct="least_squares",
        steps=3,
    )
    assert report.steps == 3 and len(report.rounds) == 3
    first = report.rounds[0]["active_units"]
    last = report.rounds[-1]["active_units"]
    for path, units in report.units_before.items():
        sizes = [r["active_units"][path] for r in report.rounds]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
        # Each layer ends near 40 % of its nodes, as one round at percentile 60 would leave.
        assert abs(last[path] - 0.4 * units) <= 1
        assert first[path] < units
    assert report.units_after == last
    assert {p: layer.units for p, layer in spectral_layers(small)} == last
    assert [r["params"] for r in report.rounds][-1] == small.count_params()
    assert all(r["reconstruction_errors"] for r in report.rounds)
    assert json.loads(json.dumps(report.to_dict()))["rounds"][1]["percentile"] == 25.0


def test_recovery_with_distillation_records_it_and_trains(data) -> None:
    x, y = data
    model = _model()
    small, report = prune(
        model,
        percentile=50,
        compile_dictionary=COMPILE,
        recover={"x": x, "epochs": 2, "batch_size": 64},
        distill=True,
        temperature=3.0,
    )
    assert report.recovery_epochs == 2 and report.distill is True
    assert report.temperature == 3.0 and report.to_dict()["temperature"] == 3.0
    assert report.reconstruction_method is None
    assert small.compiled
    # Compiled for the user's loss again: labels fit.
    assert np.isfinite(small.evaluate(x, y, verbose=0, return_dict=True)["loss"])


def test_progress_covers_reconstruction_and_epochs(data) -> None:
    x, y = data
    seen: list[tuple[float, str]] = []
    prune(
        _model(),
        percentile=50,
        compile_dictionary=COMPILE,
        calibration={"x": x},
        reconstruct="least_squares",
        recover={"x": x, "y": y, "epochs": 3},
        progress=lambda fraction, message: seen.append((fraction, message)),
    )
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    messages = [m for _, m in seen]
    assert any(m.startswith("reconstructing ") for m in messages)
    assert [m.split(",")[0] for m in messages if m.startswith("epoch")] == [
        "epoch 1/3",
        "epoch 2/3",
        "epoch 3/3",
    ]


def test_raising_progress_cancels_recovery_between_epochs(data) -> None:
    x, y = data
    seen: list[str] = []

    def progress(fraction: float, message: str) -> None:
        seen.append(message)
        if message.startswith("epoch 2/"):
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        prune(
            _model(),
            percentile=50,
            compile_dictionary=COMPILE,
            recover={"x": x, "y": y, "epochs": 5},
            progress=progress,
        )
    assert [m.split(",")[0] for m in seen if m.startswith("epoch")] == ["epoch 1/5", "epoch 2/5"]
    assert "done" not in seen


X = np.zeros((4, 8), dtype="float32")
Y = np.zeros(4, dtype="int64")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reconstruct": "ridge", "calibration": {"x": X}}, "Received: reconstruct='ridge'"),
        (
            {"reconstruct": "mean"},
            "`reconstruct` .* Received: reconstruct='mean', calibration=None",
        ),
        ({"calibration": {"x": X}}, "`calibration` is only used by reconstruction"),
        ({"reconstruct": "mean", "calibration": X}, r"`calibration` must be a dict .*ndarray"),
        (
            {"reconstruct": "mean", "calibration": {"x": X, "y": Y}},
            r"exactly one entry.*Received: calibration=\{'x'",
        ),
        ({"reconstruct": "mean", "calibration": {"x": X[:0]}}, "at least one row"),
        ({"recover": {"x": X, "y": Y}}, r"`recover` needs \['epochs'\]"),
        ({"recover": {"x": X, "epochs": 1}}, r"needs \['y'\].*distill=True"),
        ({"recover": {"x": X, "y": Y, "epochs": 1, "lr": 1}}, r"unknown: \['lr'\]"),
        ({"recover": {"x": X, "y": Y, "epochs": 0}}, r"Received: recover\['epochs'\]=0"),
        (
            {"recover": {"x": X, "y": Y, "epochs": 1, "batch_size": -2}},
            r"Received: recover\['batch_size'\]=-2",
        ),
        ({"recover": [X, Y]}, "`recover` must be a dict"),
        ({"distill": True}, "Received: distill=True, recover=None"),
        ({"distill": "yes", "recover": {"x": X, "epochs": 1}}, "Received: distill='yes'"),
        ({"temperature": 0}, "Received: temperature=0"),
        ({"temperature": float("nan")}, "Received: temperature=nan"),
        ({"temperature": "2"}, "Received: temperature='2'"),
        ({"steps": 0}, "Received: steps=0"),
        ({"steps": 1.5}, "Received: steps=1.5"),
        ({"steps": True}, "Received: steps=True"),
        ({"steps": 2, "compact": False}, "Received: compact=False"),
        (
            {"reconstruct": "mean", "calibration": {"x": X}, "compact": False},
            "work on the compact model",
        ),
    ],
)
def test_invalid_options_name_the_argument(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        prune(_model(), percentile=50, compile_dictionary=COMPILE, **kwargs)


def test_recovery_needs_something_to_compile_with() -> None:
    with pytest.raises(ValueError, match=re.escape("Received: compile_dictionary=None")):
        prune(_model(), percentile=50, recover={"x": X, "y": Y, "epochs": 1})


@pytest.mark.parametrize("function", [prune_percentile, metric_based_pruning])
def test_public_functions_validate_the_options_too(function) -> None:
    args = (50,) if function is prune_percentile else ({"x": X, "y": Y}, COMPILE)
    with pytest.raises(ValueError, match="Received: steps=0"):
        function(_model(), *args, steps=0)
