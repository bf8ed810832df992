"""Schema migrations when several processes start on the same fresh SQLite data directory."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from tests.support.api import REPO_ROOT

# Each process imports first, then waits for a shared start time, so the upgrades overlap.
MIGRATE = (
    "import sys, time; from pathlib import Path; from service.settings import Settings; "
    "from service.db import upgrade_database; "
    "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); "
    "upgrade_database(Settings(data_dir=Path(sys.argv[1])))"
)


def test_concurrent_upgrades_all_succeed(tmp_path: Path) -> None:
    # The API and the embedded worker migrate at start-up at the same moment.
    start_at = time.time() + 8.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, str(tmp_path), str(start_at)],
            cwd=REPO_ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    failures = [proc.communicate(timeout=120)[1] for proc in procs if proc.wait(timeout=120)]
    assert not failures, failures[0][-2000:]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"models", "model_versions", "aliases", "jobs", "datasets"} <= tables
