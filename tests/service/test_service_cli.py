"""The ``spectral`` command line starts a working API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.api import REPO_ROOT, find_free_port


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail(f"CLI server did not become healthy:\n{log.read_text()[-3000:]}")


def test_help_lists_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "api" in result.stdout


def test_api_command_serves_on_the_given_port(tmp_path: Path) -> None:
    port = find_free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECTRAL_")}
    env.update({"SPECTRAL_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO_ROOT)})
    log = tmp_path / "cli.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "api", "--host", "127.0.0.1"]
            + ["--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process, log)
        assert httpx.get(f"{url}/models", timeout=10).json() == {"data": [], "count": 0}
        assert (tmp_path / "data" / "registry.db").is_file()
    finally:
        process.terminate()
        process.wait(timeout=30)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"},
    )


def test_prune_command_writes_a_smaller_model_and_report(
    tmp_path: Path, digits_model_path: Path, digits_data: tuple[np.ndarray, np.ndarray]
) -> None:
    import json

    import keras

    import spectral

    x, y = digits_data
    np.savez(tmp_path / "val.npz", x=x[:300], y=y[:300])
    out, report = tmp_path / "small.keras", tmp_path / "report.json"
    result = _cli(
        "prune",
        str(digits_model_path),
        str(out),
        "--data",
        str(tmp_path / "val.npz"),
        "--max-delta-percent",
        "5",
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(report.read_text())
    assert summary["method"] == "metric"
    assert summary["params_after"] < summary["params_before"]
    assert summary["metric_after"] >= summary["metric_before"] * 0.95
    small = keras.saving.load_model(out, safe_mode=True)
    assert small.count_params() == summary["params_after"]
    # The CLI's model is the library's own pruning at the chosen percentile.
    original = keras.saving.load_model(digits_model_path, safe_mode=True)
    expected = spectral.prune_percentile(original, summary["percentile"])
    np.testing.assert_allclose(
        small.predict(x[:16], verbose=0), expected.predict(x[:16], verbose=0), atol=1e-5
    )


def test_prune_command_reports_bad_input(tmp_path: Path, digits_model_path: Path) -> None:
    result = _cli("prune", str(digits_model_path), str(tmp_path / "o.keras"), "--percentile", "150")
    assert result.returncode == 2
    assert "percentile" in result.stderr and "150" in result.stderr
    assert not (tmp_path / "o.keras").exists()
