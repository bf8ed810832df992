"""/docs in a real headless Chromium on a machine without internet access (this one)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.api import RunningApi

# scripts/ensure-services installs Debian's chromium; the flags keep it off the network.
CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/ensure-services)")
def test_docs_render_their_operations_offline(
    start_api: Callable[..., RunningApi], tmp_path: Path
) -> None:
    api = start_api()
    dom = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{api}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # Swagger UI drew the operations from /openapi.json: its scripts loaded and ran.
    assert 'data-path="/prune"' in dom, dom[-2000:]
    assert 'data-path="/models/{model_id}/predict"' in dom
    assert "Unable to render this definition" not in dom
