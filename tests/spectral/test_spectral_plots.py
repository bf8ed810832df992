"""Plots: the figures hold the report's data (histograms, cutoff, budget, chosen point), and the
PNG functions render them, write files and stack the report image."""

from __future__ import annotations

import io

import keras
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from spectral import Spectral, plot_eigenvalues, plot_metric_curve, plot_report, prune
from spectral.plots import eigenvalue_figure, metric_curve_figure
from tests.support.spectral import COMPILE, randomize

PNG = b"\x89PNG"


def _model() -> keras.Model:
    return randomize(
        keras.Sequential(
            [keras.Input((4,)), Spectral(16, activation="relu"), Spectral(8), keras.layers.Dense(2)]
        )
    )


def _lines(axis) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
        for line in axis.get_lines()
    }


def _png_shape(data: bytes) -> tuple[int, ...]:
    return mpimg.imread(io.BytesIO(data), format="png").shape


@pytest.fixture
def search_report(trained_model, digits):
    _, _, x_val, y_val = digits
    return prune(
        trained_model,
        eval_dictionary={"x": x_val, "y": y_val},
        compile_dictionary=COMPILE,
        max_delta_percent=2,
        percentile_step=20,
    ).report


def test_eigenvalue_figure_histograms_each_layer_with_its_cutoff() -> None:
    model = _model()
    eigenvalues = [model.layers[0].eigenvalues, model.layers[1].eigenvalues]
    cutoffs = {model.layers[0].name: 0.5, model.layers[1].name: 0.25}
    figure = eigenvalue_figure(model, cutoff=cutoffs)
    try:
        axes = [axis for axis in figure.axes if axis.get_visible()]
        assert [axis.get_title() for axis in axes] == [
            f"{model.layers[0].name} (16 nodes)",
            f"{model.layers[1].name} (8 nodes)",
        ]
        for axis, values, line in zip(axes, eigenvalues, (0.5, 0.25), strict=True):
            # The bar heights count every node once, and the bars span exactly |eigenvalues|.
            heights = [patch.get_height() for patch in axis.patches]
            assert sum(heights) == values.size
            lefts = [patch.get_x() for patch in axis.patches]
            rights = [patch.get_x() + patch.get_width() for patch in axis.patches]
            np.testing.assert_allclose(min(lefts), np.abs(values).min(), rtol=1e-6)
            np.testing.assert_allclose(max(rights), np.abs(values).max(), rtol=1e-6)
            xs, _ = _lines(axis)["cutoff"]
            np.testing.assert_allclose(xs, [line, line])
    finally:
        plt.close(figure)


def test_eigenvalue_figure_from_report_uses_the_reports_global_cutoff() -> None:
    report = prune(_model(), percentile=40).report
    figure = eigenvalue_figure(report.to_dict())
    try:
        axes = [axis for axis in figure.axes if axis.get_visible()]
        assert len(axes) == len(report.eigenvalues) == 2
        for axis in axes:
            xs, _ = _lines(axis)["cutoff"]
            np.testing.assert_allclose(xs, [report.cutoff, report.cutoff])
    finally:
        plt.close(figure)


def test_metric_curve_figure_plots_the_trace_budget_and_choice(search_report) -> None:
    report = search_report
    assert any(not e["within_budget"] for e in report.evaluations), "need an over-budget point"
    figure = metric_curve_figure(report)
    try:
        lines = _lines(figure.axes[0])
        points = sorted(report.evaluations, key=lambda e: e["percentile"])
        xs, ys = lines["accuracy"]
        np.testing.assert_allclose(xs, [e["percentile"] for e in points])
        np.testing.assert_allclose(ys, [e["value"] for e in points])
        over_x, over_y = lines["over budget"]
        np.testing.assert_allclose(
            over_x, [e["percentile"] for e in points if not e["within_budget"]]
        )
        np.testing.assert_allclose(over_y, [e["value"] for e in points if not e["within_budget"]])
        # Accuracy is higher-is-better: the budget line sits 2 % below the unpruned value.
        _, budget = lines["budget (2%)"]
        np.testing.assert_allclose(budget, [report.metric_before * 0.98] * 2)
        _, unpruned = lines["unpruned"]
        np.testing.assert_allclose(unpruned, [report.metric_before] * 2)
        chosen, _ = lines["chosen"]
        np.testing.assert_allclose(chosen, [report.percentile] * 2)
    finally:
        plt.close(figure)


def test_metric_curve_budget_is_above_for_a_loss() -> None:
    data = {
        "metric_name": "loss",
        "metric_before": 2.0,
        "max_delta_percent": 10.0,
        "percentile": 20.0,
        "evaluations": [
            {"percentile": 0.0, "value": 2.0, "within_budget": True},
            {"percentile": 20.0, "value": 2.1, "within_budget": True},
            {"percentile": 40.0, "value": 3.0, "within_budget": False},
        ],
    }
    figure = metric_curve_figure(data)
    try:
        lines = _lines(figure.axes[0])
        np.testing.assert_allclose(lines["budget (10%)"][1], [2.2, 2.2])
        np.testing.assert_allclose(lines["over budget"][0], [40.0])
    finally:
        plt.close(figure)


def test_plot_functions_render_and_write_png(tmp_path, search_report) -> None:
    model = _model()
    data = plot_eigenvalues(model, cutoff=0.5, path=tmp_path / "eigs.png")
    assert data.startswith(PNG)
    assert (tmp_path / "eigs.png").read_bytes() == data
    curve = plot_metric_curve(search_report, path=tmp_path / "curve.png")
    assert curve.startswith(PNG)
    assert (tmp_path / "curve.png").read_bytes() == curve
    # 6 x 4 inches at 100 dpi.
    assert _png_shape(curve)[:2] == (400, 600)


def test_plot_report_stacks_the_curve_under_the_eigenvalues(tmp_path, search_report) -> None:
    eigen = _png_shape(plot_eigenvalues(search_report))
    curve = _png_shape(plot_metric_curve(search_report))
    data = plot_report(search_report, path=tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes() == data
    stacked = _png_shape(data)
    assert stacked[:2] == (eigen[0] + curve[0], max(eigen[1], curve[1]))
    assert _png_shape(plot_report(search_report.to_dict())) == stacked


def test_plot_report_without_a_search_is_the_eigenvalue_plot() -> None:
    report = prune(_model(), percentile=10).report
    assert plot_report(report) == plot_eigenvalues(report)


def test_plot_metric_curve_without_evaluations() -> None:
    report = prune(_model(), percentile=10).report
    with pytest.raises(ValueError, match="no metric evaluations"):
        plot_metric_curve(report)
