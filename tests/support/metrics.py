"""Reading Prometheus metrics in tests: a scrape's samples, and one process's share of a
multiprocess directory."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text body, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0.0 when the series is absent (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(base_url: str, headers: Mapping[str, str] | None = None) -> Samples:
    """GET /metrics on a new connection (so scrapes are spread over the server's workers)."""
    response = httpx.get(f"{base_url}/metrics", headers=dict(headers or {}), timeout=30)
    response.raise_for_status()
    return parse_samples(response.text)


def counter_files(directory: Path) -> dict[int, Path]:
    """The counter file of each process that wrote one, by pid."""
    return {int(path.stem.rsplit("_", 1)[1]): path for path in directory.glob("counter_*.db")}


def process_samples(files: Iterable[Path], scratch: Path) -> Samples:
    """What the multiprocess collector makes of these files alone (copied to ``scratch``)."""
    scratch.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy(path, scratch / path.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(scratch))
    return parse_samples(generate_latest(registry).decode())
