"""Plots return PNG bytes and write files."""

from __future__ import annotations

import keras
import pytest

from spectral import Spectral, plot_eigenvalues, plot_metric_curve, prune
from tests.support.spectral import COMPILE, randomize

PNG = b"\x89PNG"


def _model() -> keras.Model:
    return randomize(
        keras.Sequential(
            [keras.Input((4,)), Spectral(16, activation="relu"), Spectral(8), keras.layers.Dense(2)]
        )
    )


def test_plot_eigenvalues_from_model_and_report(tmp_path) -> None:
    model = _model()
    data = plot_eigenvalues(model, cutoff=0.5, path=tmp_path / "eigs.png")
    assert data.startswith(PNG)
    assert (tmp_path / "eigs.png").read_bytes() == data
    report = prune(model, percentile=40).report
    assert plot_eigenvalues(report).startswith(PNG)
    assert plot_eigenvalues(report.to_dict(), path=tmp_path / "r.png").startswith(PNG)
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_plot_metric_curve(tmp_path, trained_model, digits) -> None:
    _, _, x_val, y_val = digits
    _, report = prune(
        trained_model,
        eval_dictionary={"x": x_val, "y": y_val},
        compile_dictionary=COMPILE,
        percentile_step=20,
    )
    data = plot_metric_curve(report, path=tmp_path / "curve.png")
    assert data.startswith(PNG)
    assert (tmp_path / "curve.png").read_bytes() == data
    assert plot_metric_curve(report.to_dict()).startswith(PNG)


def test_plot_metric_curve_without_evaluations() -> None:
    report = prune(_model(), percentile=10).report
    with pytest.raises(ValueError, match="no metric evaluations"):
        plot_metric_curve(report)
