"""The ``spectral`` command line (`service.cli.commands.app`), and `main`, its console script.

`main` imports nothing but the standard library before the app: an install without typer or
rich gets a message naming the extra to install, not a traceback. The app's commands import
what they need inside themselves, so ``prune`` runs on the library alone, the client commands
on the ``[client]`` extra, and the server commands name the ``[service]`` extra.
"""

from __future__ import annotations

import sys
from typing import Any

_CLI_PACKAGES = {"typer", "click", "rich", "shellingham"}
CLI_EXTRA_MESSAGE = (
    "error: the `spectral` command needs the client extra ({missing} is not installed): "
    'pip install "spectral-pruning[client]" (or "spectral-pruning[service]" for the servers)'
)


def main() -> None:
    """The console script: runs the app, or says which extra is missing (exit 2)."""
    try:
        from service.cli.commands import app
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in _CLI_PACKAGES:
            raise
        sys.stderr.write(CLI_EXTRA_MESSAGE.format(missing=exc.name) + "\n")
        raise SystemExit(2) from exc
    app()


def __getattr__(name: str) -> Any:
    # `from service.cli import app` (and the worker launcher's names) without importing typer
    # when only `main` is wanted.
    if name == "app":
        from service.cli.commands import app

        return app
    if name in ("worker_command", "start_worker"):
        from service.cli import server

        return getattr(server, name)
    raise AttributeError(f"module 'service.cli' has no attribute {name!r}")
