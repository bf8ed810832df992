"""The example CI pipelines (deploy/ci/): both run deploy/ci/compress.sh, and that exact script,
run against a live `spectral serve` (embedded defaults) with a client-only `spectral`, exits 0
and moves the alias when the gate passes, exits 1 and leaves it when the gate refuses, and the
alias history shows each move with its job.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.support.api import REPO_ROOT, child_env, find_free_port
from tests.support.digits import digits

pytestmark = pytest.mark.timeout(400)

SCRIPT = REPO_ROOT / "deploy" / "ci" / "compress.sh"
SCRIPT_CALL = "deploy/ci/compress.sh"

# What `pip install "spectral-pruning[client]"` lacks: the client CLI must run without them.
CLIENT_ONLY_SPECTRAL = """#!{python}
import sys
ABSENT = {{"tensorflow", "keras", "jax", "fastapi", "starlette", "uvicorn", "sqlalchemy",
          "alembic", "celery", "kombu", "redis", "psycopg", "sklearn", "numpy"}}
class ClientExtraOnly:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, ClientExtraOnly())
from service.cli import main
main()
"""


def test_both_pipelines_run_the_one_script_and_keep_the_report() -> None:
    github = yaml.safe_load((REPO_ROOT / "deploy/ci/github-actions.yml").read_text())
    steps = github["jobs"]["compress"]["steps"]
    runs = [step.get("run", "") for step in steps]
    assert any(run.startswith(SCRIPT_CALL) for run in runs), runs
    assert any('"spectral-pruning[client]"' in run for run in runs), runs
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "spectral-out/"

    gitlab = yaml.safe_load((REPO_ROOT / "deploy/ci/gitlab-ci.yml").read_text())
    job = gitlab["compress-model"]
    assert any(line.startswith(SCRIPT_CALL) for line in job["script"]), job["script"]
    assert job["artifacts"]["when"] == "always" and job["artifacts"]["paths"] == ["spectral-out/"]
    for env in (github["jobs"]["compress"]["env"], job["variables"]):
        assert env["OUT_DIR"] == "spectral-out" and env["PROMOTE_ALIAS"] == "production"
    assert os.access(SCRIPT, os.X_OK)


class Served:
    """A `spectral serve` started in a session of its own; `ready()` waits for /readyz."""

    def __init__(self, work: Path) -> None:
        self.url = f"http://127.0.0.1:{find_free_port()}"
        self.log_path = work / "serve.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(work / "data")]
                + ["--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1]],
                cwd=REPO_ROOT,
                env=child_env({"SPECTRAL_BROKER_POLLING_INTERVAL_S": "0.1"}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ready(self) -> str:
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log_path.read_text()[-3000:]
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGINT stops the API, then the embedded worker (in a session of its own); whatever
        is left after that is killed, the worker's group included."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        match = re.search(r"embedded worker pid (\d+)", self.log_path.read_text(errors="replace"))
        if match:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(match.group(1)), signal.SIGKILL)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`spectral serve` on the embedded defaults (SQLite registry and broker, one worker),
    started before the session's digits model is trained, so both start-ups overlap."""
    server = Served(tmp_path_factory.mktemp("served"))
    try:
        yield server
    finally:
        server.stop()


def _pipeline_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    """The CI job's environment: SPECTRAL_URL, and a `spectral` with only the client extra."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    spectral = bin_dir / "spectral"
    spectral.write_text(CLIENT_ONLY_SPECTRAL.format(python=sys.executable))
    spectral.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    return child_env({"PATH": path, "SPECTRAL_URL": url, **extra})


def _run_pipeline(
    cwd: Path, env: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = subprocess.run(
        [str(SCRIPT), "digits.keras", "digits.npz", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    job_path = cwd / "spectral-out" / "job.json"
    job = json.loads(job_path.read_text()) if job_path.exists() else {}
    return result, job


def test_the_pipeline_promotes_within_budget_and_fails_over_it(
    served: Served, tmp_path: Path, digits_model_path: Path
) -> None:
    url = served.ready()
    x, y = digits()
    (tmp_path / "digits.keras").write_bytes(digits_model_path.read_bytes())
    np.savez(tmp_path / "digits.npz", x=x, y=y)
    env = _pipeline_env(tmp_path, url, MODEL_NAME="ci-digits", MAX_DROP_PERCENT="2")

    # Passing gate: the metric search keeps accuracy within 1 % of itself, under 2 points.
    passed, job = _run_pipeline(tmp_path, env, "--method", "metric", "--max-delta-percent", "1")
    assert passed.returncode == 0, passed.stderr[-3000:]
    promotion = job["result"]["promotion"]
    assert promotion["promoted"] is True, promotion
    promoted_version = job["result"]["version"]
    assert (tmp_path / "spectral-out" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = httpx.get(f"{url}/models/ci-digits").json()
    assert model["aliases"] == {"production": promoted_version}

    # Failing gate: 95 % of the nodes gone costs far more than 2 points.
    (tmp_path / "spectral-out" / "report.png").unlink()
    failed, job = _run_pipeline(tmp_path, env, "--method", "percentile", "--percentile", "95")
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "refused" in failed.stderr
    refused = job["result"]["promotion"]
    assert (
        refused["promoted"] is False and refused["metric_after"] < refused["metric_before"] - 0.02
    )
    assert job["status"] == "succeeded" and job["result"]["version"] > promoted_version
    # The refused version's report is still kept for the pipeline's artifacts.
    assert (tmp_path / "spectral-out" / "report.png").is_file()
    model = httpx.get(f"{url}/models/ci-digits").json()
    assert model["aliases"] == {"production": promoted_version}

    history = httpx.get(f"{url}/models/ci-digits/aliases/production/history").json()
    assert [(e["reason"], e["from_version"], e["to_version"]) for e in history["data"]] == [
        ("promotion", None, promoted_version)
    ]
    pushed = json.loads((tmp_path / "spectral-out" / "pushed.json").read_text())
    first_job = httpx.get(f"{url}/jobs", params={"model_id": "ci-digits"}).json()["data"]
    by_version = {j["result"]["version"]: j["id"] for j in first_job if j["result"]}
    assert history["data"][0]["job_id"] == by_version[promoted_version]
    assert pushed["version"] == 3  # v1 pushed, v2 pruned, v3 pushed again (then v4 pruned)

    # A server that is down: exit 4 after the bounded retries, not a traceback.
    down = _pipeline_env(
        tmp_path,
        f"http://127.0.0.1:{find_free_port()}",
        SPECTRAL_RETRIES="1",
        SPECTRAL_RETRY_BACKOFF_S="0.05",
    )
    unreachable, _ = _run_pipeline(tmp_path, down)
    assert unreachable.returncode == 4, unreachable.stderr[-2000:]
    assert "cannot reach" in unreachable.stderr and "Traceback" not in unreachable.stderr
