"""bench/scale.py --quick: one API, one worker, PostgreSQL, Redis and a moto S3 server; every
job accounted for, and nothing of the run left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.support.api import REPO_ROOT, child_env

# The database the bench connects to (its default --postgres), to create and drop its own.
POSTGRES_ADMIN_URL = "postgresql+psycopg://127.0.0.1:5432/test"
pytestmark = pytest.mark.timeout(420)


def _services_or_skip() -> None:
    try:
        redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=2).ping()
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # depends on the machine: CI always has both
        pytest.skip(f"Redis or PostgreSQL on 127.0.0.1 is not reachable: {exc}")


def test_quick_scale_bench_accounts_for_every_job(tmp_path: Path) -> None:
    _services_or_skip()
    done = subprocess.run(
        [sys.executable, "bench/scale.py", "--quick", "--out-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    result = json.loads((tmp_path / "scale_quick.json").read_text())
    assert (tmp_path / "scale_quick.md").read_text().count("PASS") == 1

    jobs = result["config"]["jobs"]
    book = result["bookkeeping"]
    assert result["ok"] is True and result["processes_exited_early"] == []
    assert book["submitted"] == book["in_database"] == book["succeeded"] == jobs > 0
    assert book["versions_from_jobs"] == jobs
    for key in (
        "submit_failed",
        "lost",
        "duplicated_ids",
        "unknown_jobs_in_database",
        "not_terminal",
        "failed",
        "jobs_without_version",
        "jobs_with_several_versions",
        "version_mismatch",
        "versions_without_job",
    ):
        assert book[key] == 0, (key, book)
    assert result["jobs"]["latency"]["n"] == jobs
    assert 0 < result["jobs"]["latency"]["p50_s"] <= result["jobs"]["latency"]["p99_s"]
    assert result["jobs"]["jobs_per_minute"] > 0
    for phase in ("baseline", "under_jobs"):
        assert result["predict"][phase]["n"] > 0 and result["predict"][phase]["errors"] == 0
        assert result["predict"][phase]["p99_s"] > 0
    # The API and the worker hold connections to the run's own database while it runs.
    assert result["database_connections"]["max"] >= 2
    assert result["environment"]["git_revision"]

    # Cleaned up: the database is dropped and the Redis database emptied.
    resources = result["resources"]
    assert resources["database"].startswith("spectral_scale_")
    engine = create_engine(POSTGRES_ADMIN_URL)
    with engine.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM pg_database WHERE datname = :n"),
            {"n": resources["database"]},
        ).scalar()
    engine.dispose()
    assert left == 0
    assert redis.Redis.from_url(resources["redis"]).dbsize() == 0
