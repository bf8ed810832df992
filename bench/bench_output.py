"""How a benchmark records its run: environment facts, JSON + Markdown files, logging set-up."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np

logger = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def configure_logging(verbose: bool = False) -> None:
    """Logs benchmark progress to stderr with timestamps."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _devices() -> list[str]:
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return [str(d) for d in jax.devices()]
        if backend == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_logical_devices()]
        if backend == "torch":
            import torch

            return ["cuda"] if torch.cuda.is_available() else ["cpu"]
    except Exception as exc:  # a missing accelerator runtime must not stop a benchmark
        logger.warning("could not list devices: %s", exc)
    return []


def _git_revision() -> str | None:
    """The checkout's commit, with `-dirty` when `spectral/` or `bench/` has local changes."""
    root = RESULTS_DIR.parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "spectral", "bench/*.py"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout (e.g. a copied tree): the versions above still hold
    return commit + ("-dirty" if changes else "")


def environment() -> dict[str, Any]:
    """Versions, backend, devices, CPU count and date of this run."""
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_revision": _git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "keras_backend": keras.backend.backend(),
        "keras": keras.__version__,
        "tensorflow": _version("tensorflow"),
        "jax": _version("jax"),
        "numpy": np.__version__,
        "devices": _devices(),
    }


def summary(values: list[float]) -> dict[str, float]:
    """Mean, std (population), median, p90, min and max of a list of numbers."""
    array = np.asarray(values, dtype="float64")
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "median": float(np.median(array)),
        "p90": float(np.percentile(array, 90)),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, stem: str, payload: dict[str, Any], markdown: str) -> None:
    """Writes `<stem>.json` (raw numbers + environment) and `<stem>.md` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    md_path.write_text(markdown)
    logger.info("wrote %s and %s", json_path, md_path)
