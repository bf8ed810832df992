"""`service.client` and the CLI's client commands import nothing of TensorFlow, Keras, FastAPI,
SQLAlchemy or Celery: checked in a fresh interpreter, where nothing else imported them first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.api import REPO_ROOT, child_env

HEAVY = [
    "tensorflow",
    "keras",
    "jax",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "celery",
    "kombu",
    "alembic",
    "uvicorn",
    "numpy",
    "spectral",
    "worker",
]


@pytest.mark.parametrize(
    "module",
    ["service.client", "service.cli.commands", "service.cli.remote", "service.cli.waiting"],
)
def test_a_fresh_interpreter_imports_no_server_or_library_package(module: str) -> None:
    code = (
        f"import json, sys, {module}\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    # The probe itself works: importing the library does show up.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            code.replace(f"import json, sys, {module}", "import json, sys, sqlalchemy"),
        ],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(probe.stdout) == ["sqlalchemy"]
