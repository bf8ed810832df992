"""Metric-based pruning: budget respected, grid honoured, errors, progress and cancellation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from spectral import Spectral, metric_based_pruning, prune, prune_percentile
from spectral.graph import spectral_layers
from spectral.search import lower_is_better, percentile_grid, within_budget
from tests.support.spectral import COMPILE, randomize


def _metric(model: keras.Model, x, y, name: str) -> float:
    return float(model.evaluate(x, y, verbose=0, return_dict=True)[name])


@pytest.mark.parametrize(
    ("metric", "delta", "step"),
    [("accuracy", 3.0, 10.0), ("loss", 25.0, 7.0)],
)
def test_search_respects_budget_and_grid(trained_model, digits, metric, delta, step) -> None:
    _, _, x_val, y_val = digits
    eval_dictionary = {"x": x_val, "y": y_val, "batch_size": 128}
    model, report = prune(
        trained_model,
        eval_dictionary=eval_dictionary,
        compile_dictionary=COMPILE,
        compare_metric=metric,
        max_delta_percent=delta,
        percentile_step=step,
    )
    reference = _metric(trained_model, x_val, y_val, metric)
    assert report.metric_before == pytest.approx(reference, rel=1e-5)
    value = _metric(model, x_val, y_val, metric)
    assert report.metric_after == pytest.approx(value, rel=1e-5)
    assert within_budget(value, reference, metric, delta)
    grid = percentile_grid(step)
    assert report.percentile in grid
    assert all(e["percentile"] in grid for e in report.evaluations)
    assert report.method == "metric"
    if report.percentile < grid[-1]:
        following = grid[grid.index(report.percentile) + 1]
        bigger = prune_percentile(trained_model, following, COMPILE)
        assert not within_budget(_metric(bigger, x_val, y_val, metric), reference, metric, delta)
    assert report.percentile > 0  # the trained model does have prunable slack
    units = {p: layer.units for p, layer in spectral_layers(model)}
    assert units == report.units_after
    assert model.count_params() < trained_model.count_params()


def test_huge_budget_returns_most_pruned_grid_point(trained_model, digits) -> None:
    _, _, x_val, y_val = digits
    model = metric_based_pruning(
        trained_model,
        {"x": x_val, "y": y_val},
        COMPILE,
        compare_metric="accuracy",
        max_delta_percent=1000,
        percentile_step=25,
    )
    units = [layer.units for _, layer in spectral_layers(model)]
    assert units == [1, 1]  # percentile 100 with min_units=1 keeps the top node per layer


def test_explicit_direction_overrides_the_name(trained_model, digits) -> None:
    _, _, x_val, y_val = digits
    kwargs = {
        "eval_dictionary": {"x": x_val, "y": y_val},
        "compile_dictionary": COMPILE,
        "compare_metric": "loss",
        "max_delta_percent": 1.0,
        "percentile_step": 25,
    }
    by_name = prune(trained_model, **kwargs).report
    assert by_name.higher_is_better is False and by_name.percentile < 100
    # Declared higher-is-better, a rising loss counts as an improvement: nothing breaks the
    # budget, so the search ends at the most pruned grid point.
    declared = prune(trained_model, higher_is_better=True, **kwargs).report
    assert declared.higher_is_better is True and declared.percentile == 100
    assert declared.to_dict()["higher_is_better"] is True


def test_zero_budget_is_never_none(trained_model, digits) -> None:
    _, _, x_val, y_val = digits
    model, report = prune(
        trained_model,
        eval_dictionary={"x": x_val, "y": y_val},
        compile_dictionary=COMPILE,
        compare_metric="loss",
        max_delta_percent=0.0,
        percentile_step=50,
    )
    assert report.percentile in (0.0, 50.0, 100.0)
    assert {path: layer.units for path, layer in spectral_layers(model)} == report.units_after
    assert report.metric_after <= report.metric_before * (1 + 1e-5)


def test_missing_metric_lists_available(trained_model, digits) -> None:
    _, _, x_val, y_val = digits
    with pytest.raises(ValueError, match=r"'auc'.*Available: \['accuracy', 'loss'\]"):
        metric_based_pruning(trained_model, {"x": x_val, "y": y_val}, COMPILE, "auc")


def test_uses_models_own_compile_config(trained_model, digits) -> None:
    _, _, x_val, y_val = digits
    model = metric_based_pruning(trained_model, {"x": x_val, "y": y_val}, None, "accuracy", 50, 50)
    assert model.compiled


def test_uncompiled_model_without_compile_dictionary(digits) -> None:
    _, _, x_val, y_val = digits
    model = randomize(
        keras.Sequential(
            [keras.Input((64,)), Spectral(8, activation="relu"), keras.layers.Dense(10)]
        )
    )
    with pytest.raises(ValueError, match="compile_dictionary"):
        metric_based_pruning(model, {"x": x_val, "y": y_val}, None)


def test_progress_is_reported_and_can_cancel(trained_model, digits) -> None:
    _, _, x_val, y_val = digits
    calls: list[tuple[float, str]] = []
    prune(
        trained_model,
        eval_dictionary={"x": x_val, "y": y_val},
        compile_dictionary=COMPILE,
        percentile_step=25,
        progress=lambda f, m: calls.append((f, m)),
    )
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert any("percentile" in m for _, m in calls)

    class Cancelled(Exception):
        pass

    def cancel(fraction: float, message: str) -> None:
        if fraction > 0.05:
            raise Cancelled(message)

    with pytest.raises(Cancelled):
        prune(
            trained_model,
            eval_dictionary={"x": x_val, "y": y_val},
            compile_dictionary=COMPILE,
            progress=cancel,
        )


def test_percentile_mode_reports_metric(trained_model, digits) -> None:
    _, _, x_val, y_val = digits
    model, report = prune(
        trained_model,
        percentile=20,
        eval_dictionary={"x": x_val, "y": y_val},
        compile_dictionary=COMPILE,
    )
    assert report.metric_name == "accuracy"
    assert report.metric_after == pytest.approx(_metric(model, x_val, y_val, "accuracy"))
    assert report.metric_before == pytest.approx(_metric(trained_model, x_val, y_val, "accuracy"))
    assert [e["percentile"] for e in report.evaluations] == [20.0]


@pytest.mark.parametrize(
    ("name", "lower"),
    [
        ("loss", True),
        ("sparse_categorical_crossentropy", True),
        ("mean_absolute_error", True),
        ("mse", True),
        ("log_cosh", True),
        ("false_negatives", True),
        ("false_positives", True),
        ("true_positives", False),
        ("accuracy", False),
        ("auc", False),
        ("precision", False),
        ("f1_score", False),
    ],
)
def test_metric_direction(name, lower) -> None:
    assert lower_is_better(name) is lower


def test_budget_is_relative() -> None:
    assert within_budget(0.9, 1.0, "accuracy", 10)
    assert not within_budget(0.89, 1.0, "accuracy", 10)
    assert within_budget(1.1, 1.0, "loss", 10)
    assert not within_budget(1.11, 1.0, "loss", 10)
    assert within_budget(0.5, 1.0, "loss", 0)  # improvements are always fine
    assert not within_budget(float("nan"), 1.0, "loss", 10)
    assert within_budget(1.0, 10.0, "custom_score", 5, higher_is_better=False)
    assert not within_budget(1.0, 10.0, "custom_score", 5, higher_is_better=True)


def test_grid() -> None:
    assert percentile_grid(25) == [0, 25, 50, 75, 100]
    assert percentile_grid(30) == [0, 30, 60, 90]
    assert np.allclose(percentile_grid(7)[-1], 98)
