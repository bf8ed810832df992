"""The version page's PNGs, drawn from the stored report with `spectral.plots` (Agg).

Drawing takes a fraction of a second and the report of a version never changes, so the last
few images are kept, keyed by the version's checksum. pyplot's figure registry is global, so
one lock serializes drawing across the server's threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Literal

from service.errors import ReportNotFound
from service.versions import VersionRecord
from spectral import plot_eigenvalues, plot_metric_curve

PlotKind = Literal["eigenvalues", "metric"]
_CACHE_SIZE = 32
_lock = threading.Lock()
_cache: OrderedDict[tuple[str, int, str, str], bytes] = OrderedDict()


def has_plot(record: VersionRecord, kind: PlotKind) -> bool:
    report = record.report or {}
    if kind == "eigenvalues":
        return bool(report.get("eigenvalues"))
    return any(e.get("value") is not None for e in report.get("evaluations") or [])


def report_png(record: VersionRecord, kind: PlotKind) -> bytes:
    """The ``kind`` plot of the version's report as PNG bytes.

    Raises:
        ReportNotFound: the version has no report, or its report has nothing to draw.
    """
    if record.report is None or not has_plot(record, kind):
        raise ReportNotFound(
            f"Model {record.model_id!r} version {record.version} has no {kind} plot"
        )
    key = (record.model_id, record.version, record.sha256, kind)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        draw = plot_eigenvalues if kind == "eigenvalues" else plot_metric_curve
        image = draw(record.report)
        _cache[key] = image
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return image
