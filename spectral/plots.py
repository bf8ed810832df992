"""PNG plots of eigenvalue distributions and of the metric-based search (matplotlib, Agg).

Each plot is built as a matplotlib `Figure` by `eigenvalue_figure` / `metric_curve_figure`, so
tests (and callers who want to restyle) can inspect the plotted data before it is rendered; the
public `plot_*` functions render those figures to PNG bytes.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from spectral.graph import spectral_layers  # noqa: E402
from spectral.report import PruningReport  # noqa: E402
from spectral.search import lower_is_better  # noqa: E402


def _png(figure: Figure, path: str | Path | None) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return _write(buffer.getvalue(), path)


def _write(data: bytes, path: str | Path | None) -> bytes:
    if path is not None:
        Path(path).write_bytes(data)
    return data


def plot_eigenvalues(
    model_or_report: keras.Model | PruningReport | dict[str, Any],
    cutoff: float | dict[str, float] | None = None,
    path: str | Path | None = None,
) -> bytes:
    """Plots each Spectral layer's |eigenvalue| distribution, with the pruning cutoff marked.

    Args:
        model_or_report: A model, a `PruningReport` or its `to_dict()`.
        cutoff: Cutoff to mark (float, or dict layer path -> float). Defaults to the report's.
        path: Where to also write the PNG.

    Returns:
        The PNG image as bytes.

    Raises:
        ValueError: If there are no eigenvalues to plot.
    """
    return _png(eigenvalue_figure(model_or_report, cutoff), path)


def eigenvalue_figure(
    model_or_report: keras.Model | PruningReport | dict[str, Any],
    cutoff: float | dict[str, float] | None = None,
) -> Figure:
    """The figure `plot_eigenvalues` renders: one |eigenvalue| histogram per Spectral layer.

    Each axis is titled `"<path> (<n> nodes)"`; the cutoff is a vertical line labelled
    `"cutoff"`. The caller owns the figure (close it with `matplotlib.pyplot.close`).
    """
    if isinstance(model_or_report, PruningReport):
        model_or_report = model_or_report.to_dict()
    if isinstance(model_or_report, dict):
        eigenvalues = {
            k: np.asarray(v, dtype=float) for k, v in model_or_report["eigenvalues"].items()
        }
        if cutoff is None:
            cutoff = model_or_report.get("cutoff")
    else:
        eigenvalues = {p: layer.eigenvalues for p, layer in spectral_layers(model_or_report)}
    if not eigenvalues:
        raise ValueError("There are no Spectral eigenvalues to plot.")
    count = len(eigenvalues)
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for axis, (name, values) in zip(axes.flat, eigenvalues.items(), strict=False):
        magnitude = np.abs(values[np.isfinite(values)])
        axis.hist(magnitude, bins=min(40, max(5, magnitude.size // 2)), color="tab:blue")
        line = cutoff.get(name) if isinstance(cutoff, dict) else cutoff
        if line is not None:
            axis.axvline(float(line), color="tab:red", linestyle="--", label="cutoff")
            axis.legend(loc="upper right")
        axis.set_title(f"{name} ({values.size} nodes)")
        axis.set_xlabel("|eigenvalue|")
        axis.set_ylabel("nodes")
    for axis in list(axes.flat)[count:]:
        axis.set_visible(False)
    figure.tight_layout()
    return figure


def plot_metric_curve(
    report: PruningReport | dict[str, Any], path: str | Path | None = None
) -> bytes:
    """Plots the searched metric against the pruned percentile, with the budget marked.

    Args:
        report: A `PruningReport` or its `to_dict()`, with `evaluations`.
        path: Where to also write the PNG.

    Returns:
        The PNG image as bytes.

    Raises:
        ValueError: If the report holds no evaluations.
    """
    return _png(metric_curve_figure(report), path)


def metric_curve_figure(report: PruningReport | dict[str, Any]) -> Figure:
    """The figure `plot_metric_curve` renders, on one axis.

    Lines, by label: the metric (`metric_name`, one point per evaluation), `"budget (<d>%)"`
    and `"unpruned"` (horizontal), `"chosen"` (vertical, at the report's percentile); points
    over budget get a red `x` marker labelled `"over budget"`.
    """
    data = report.to_dict() if isinstance(report, PruningReport) else report
    points = sorted(
        (e for e in data.get("evaluations", []) if e.get("value") is not None),
        key=lambda e: e["percentile"],
    )
    if not points:
        raise ValueError("The report holds no metric evaluations to plot.")
    name = data.get("metric_name") or "metric"
    figure, axis = plt.subplots(figsize=(6, 4))
    xs = [e["percentile"] for e in points]
    ys = [e["value"] for e in points]
    axis.plot(xs, ys, color="tab:blue", marker="o", label=name)
    over = [e for e in points if not e["within_budget"]]
    if over:
        axis.plot(
            [e["percentile"] for e in over],
            [e["value"] for e in over],
            "x",
            color="tab:red",
            markersize=9,
            label="over budget",
        )
    before, delta = data.get("metric_before"), data.get("max_delta_percent")
    if before is not None and delta is not None:
        higher = data.get("higher_is_better")
        lower = lower_is_better(name) if higher is None else not higher
        sign = 1.0 if lower else -1.0
        axis.axhline(
            before + sign * abs(before) * delta / 100.0,
            color="tab:red",
            linestyle="--",
            label=f"budget ({delta:g}%)",
        )
        axis.axhline(before, color="grey", linestyle=":", label="unpruned")
    if data.get("percentile") is not None:
        axis.axvline(data["percentile"], color="tab:green", linestyle="-.", label="chosen")
    axis.set_xlabel("pruned percentile")
    axis.set_ylabel(name)
    axis.legend(loc="best")
    figure.tight_layout()
    return figure


def plot_report(report: PruningReport | dict[str, Any], path: str | Path | None = None) -> bytes:
    """One PNG for a pruning report: the eigenvalue plot, with the metric curve under it.

    The metric curve is added only when the report holds a search trace (`evaluations`).

    Args:
        report: A `PruningReport` or its `to_dict()`.
        path: Where to also write the PNG.

    Returns:
        The PNG image as bytes.

    Raises:
        ValueError: If the report holds no eigenvalues.

    Example:

    >>> small, report = spectral.prune(model, percentile=50)
    >>> spectral.plot_report(report, path="report.png")
    """
    data = report.to_dict() if isinstance(report, PruningReport) else report
    eigen = plot_eigenvalues(data)
    if not data.get("evaluations"):
        return _write(eigen, path)
    return _write(_stack_pngs([eigen, plot_metric_curve(data)]), path)


def _stack_pngs(images: list[bytes]) -> bytes:
    """Stacks PNGs vertically, left-aligned, padding narrower ones with white."""
    arrays = [mpimg.imread(io.BytesIO(image), format="png") for image in images]
    width = max(array.shape[1] for array in arrays)
    padded = []
    for array in arrays:
        rgba = array if array.shape[2] == 4 else np.dstack([array, np.ones(array.shape[:2])])
        pad = np.ones((rgba.shape[0], width - rgba.shape[1], 4), dtype=rgba.dtype)
        padded.append(np.concatenate([rgba, pad], axis=1))
    buffer = io.BytesIO()
    mpimg.imsave(buffer, np.concatenate(padded, axis=0), format="png")
    return buffer.getvalue()
