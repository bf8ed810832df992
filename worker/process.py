"""Starting worker processes: ``spectral worker`` in-process, or a child of ``spectral serve``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from service.settings import Settings


def all_queues(settings: Settings) -> list[str]:
    """The default queue plus every routed one: what a lone (embedded) worker must consume."""
    return [settings.default_queue] + sorted(
        set(settings.queue_routes.values()) - {settings.default_queue}
    )


def worker_argv(
    queues: Sequence[str], *, concurrency: int = 1, loglevel: str = "INFO"
) -> list[str]:
    """Arguments of ``celery worker`` for these queues (the prefork pool: one job per child)."""
    return [
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "--pool",
        "prefork",
        "--loglevel",
        loglevel,
        "--hostname",
        f"spectral-{uuid.uuid4().hex[:8]}@%h",
        # Workers coordinate through the jobs table, not through each other.
        "--without-gossip",
        "--without-mingle",
    ]


def settings_env(settings: Settings) -> dict[str, str]:
    """``SPECTRAL_*`` variables that rebuild ``settings`` in another process."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value: Any = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, dict | list):
            text = json.dumps(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"SPECTRAL_{name.upper()}"] = text
    return env


def start_worker_process(
    settings: Settings,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int = 1,
    loglevel: str = "INFO",
    **popen_kwargs: Any,
) -> subprocess.Popen[bytes]:
    """Start ``celery worker`` as a child process in its own process group.

    Its own group lets the caller stop the worker and its pool children together.
    """
    env = {**os.environ, **settings_env(settings)}
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app"] + worker_argv(
        queues or all_queues(settings), concurrency=concurrency, loglevel=loglevel
    )
    return subprocess.Popen(argv, env=env, start_new_session=True, **popen_kwargs)
