"""What the UI's pages show, computed from registry records and stored reports.

Plain functions over `VersionRecord`/`ModelRecord` and the report dict the worker stores
(`worker.runner.run_job`): the templates only lay these values out.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from service.versions import ModelRecord, VersionRecord
from spectral.search import lower_is_better


def file_size(size: int | None) -> str:
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.2f} MiB"


def metric_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@dataclass
class VersionSummary:
    """One version as the lineage tree and the version page show it."""

    version: int
    parent_version: int | None
    method: str
    params_text: str
    removed_percent: float | None
    param_count: int
    spectral_units: int
    size_bytes: int
    metric_name: str | None
    metric_before: float | None
    metric_after: float | None
    aliases: list[str]
    has_report: bool
    children: list[VersionSummary] = field(default_factory=list)

    @property
    def size_text(self) -> str:
        return file_size(self.size_bytes)

    @property
    def removed_text(self) -> str:
        return "-" if self.removed_percent is None else f"{self.removed_percent:.1f}%"

    @property
    def metric_text(self) -> str:
        if self.metric_before is None and self.metric_after is None:
            return "-"
        name = self.metric_name or "metric"
        return f"{name} {metric_text(self.metric_before)} → {metric_text(self.metric_after)}"


def _params_text(record: VersionRecord) -> str:
    """The parameters that say how a pruned version was made, in a few words."""
    report = record.report or {}
    params = (record.lineage or {}).get("params") or {}
    parts: list[str] = []
    if report.get("percentile") is not None:
        parts.append(f"percentile {report['percentile']:g}")
    if params.get("method") in ("metric", "pretrain") or report.get("evaluations"):
        if params.get("max_delta_percent") is not None:
            parts.append(f"budget {params['max_delta_percent']:g}%")
    if params.get("scope"):
        parts.append(f"scope {params['scope']}")
    if params.get("dataset_id"):
        parts.append(f"dataset {str(params['dataset_id'])[:8]}")
    if params.get("reconstruct"):
        parts.append(f"reconstruct {params['reconstruct']}")
    return ", ".join(parts)


def summarize(record: VersionRecord, aliases: list[str]) -> VersionSummary:
    report = record.report or {}
    fraction = report.get("nodes_removed_fraction")
    lineage = record.lineage or {}
    return VersionSummary(
        version=record.version,
        parent_version=record.parent_version,
        method=str(lineage.get("method") or "uploaded"),
        params_text=_params_text(record),
        removed_percent=None if fraction is None else 100.0 * float(fraction),
        param_count=int(record.metadata.get("param_count", 0)),
        spectral_units=int(record.metadata.get("spectral_units", 0)),
        size_bytes=record.size_bytes,
        metric_name=report.get("metric_name"),
        metric_before=report.get("metric_before"),
        metric_after=report.get("metric_after"),
        aliases=aliases,
        has_report=record.report is not None,
    )


def aliases_by_version(model: ModelRecord) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        found.setdefault(version, []).append(alias)
    return found


def lineage_tree(model: ModelRecord) -> list[VersionSummary]:
    """The model's versions as a forest: each pruned version under the version it came from."""
    badges = aliases_by_version(model)
    nodes = {v.version: summarize(v, badges.get(v.version, [])) for v in model.versions}
    roots: list[VersionSummary] = []
    for node in nodes.values():  # oldest first, so children stay in version order
        parent = nodes.get(node.parent_version) if node.parent_version is not None else None
        (parent.children if parent is not None else roots).append(node)
    return roots


@dataclass(frozen=True)
class LayerRow:
    """One Spectral layer of a report: the text alternative of its eigenvalue histogram."""

    path: str
    units_before: int | None
    units_after: int | None
    cutoff: float | None
    smallest: float | None
    median: float | None
    largest: float | None


def eigenvalue_rows(report: dict[str, Any]) -> list[LayerRow]:
    cutoff = report.get("cutoff")
    rows = []
    for path, values in (report.get("eigenvalues") or {}).items():
        magnitudes = sorted(abs(float(v)) for v in values if v is not None)
        layer_cutoff = cutoff.get(path) if isinstance(cutoff, dict) else cutoff
        rows.append(
            LayerRow(
                path=path,
                units_before=(report.get("units_before") or {}).get(path),
                units_after=(report.get("units_after") or {}).get(path),
                cutoff=layer_cutoff,
                smallest=magnitudes[0] if magnitudes else None,
                median=statistics.median(magnitudes) if magnitudes else None,
                largest=magnitudes[-1] if magnitudes else None,
            )
        )
    return rows


@dataclass(frozen=True)
class EvaluationRow:
    """One point of the metric search: the text alternative of the metric curve."""

    percentile: float
    value: float | None
    within_budget: bool
    chosen: bool


def evaluation_rows(report: dict[str, Any]) -> list[EvaluationRow]:
    chosen = report.get("percentile")
    return [
        EvaluationRow(
            percentile=float(e["percentile"]),
            value=e.get("value"),
            within_budget=bool(e.get("within_budget")),
            chosen=chosen is not None and float(e["percentile"]) == float(chosen),
        )
        for e in sorted(report.get("evaluations") or [], key=lambda e: e["percentile"])
    ]


def budget_value(report: dict[str, Any]) -> float | None:
    """The metric value the search had to stay within (as `spectral.plots` draws it)."""
    before, delta = report.get("metric_before"), report.get("max_delta_percent")
    if before is None or delta is None:
        return None
    higher = report.get("higher_is_better")
    lower = lower_is_better(str(report.get("metric_name"))) if higher is None else not higher
    return float(before + (1.0 if lower else -1.0) * abs(before) * delta / 100.0)


def example_inputs(record: VersionRecord) -> str:
    """A one-row JSON input of the version's first input shape, all zeros, for the try-it box."""
    specs = record.metadata.get("inputs") or []
    if len(specs) != 1:
        return "[]"
    dims = [1 if d is None else int(d) for d in specs[0]["shape"][1:]]

    def zeros(shape: list[int]) -> Any:
        return [0.0] * shape[0] if len(shape) == 1 else [zeros(shape[1:]) for _ in range(shape[0])]

    return json.dumps([zeros(dims)] if dims else [0.0], separators=(",", ":"))


def output_summary(outputs: Any) -> list[str]:
    """One line per output row: the top class and its score when the row is a vector."""
    if not isinstance(outputs, list):
        return []
    lines = []
    for index, row in enumerate(outputs):
        if isinstance(row, list) and row and all(isinstance(v, (int, float)) for v in row):
            best = max(range(len(row)), key=lambda i: row[i])
            lines.append(f"row {index}: class {best} (score {row[best]:.4f})")
    return lines
