"""The ``spectral`` command line: run the API (and, with ``serve``, the embedded services)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.logging import RichHandler

from service.db import upgrade_database
from service.settings import Settings

app = typer.Typer(help="Spectral model service.", no_args_is_help=True)
console = Console(stderr=True)


def _configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("SPECTRAL_LOG_LEVEL", "INFO"),
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def _run_api(host: str, port: int, workers: int) -> None:
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Registry, artifacts and embedded broker directory.")
    ] = None,
) -> None:
    """Runs the API on the embedded defaults (SQLite registry under --data-dir), and one
    Celery worker process on the embedded SQLite broker unless SPECTRAL_EMBEDDED_WORKER=false."""
    _configure_logging()
    if data_dir is not None:
        # The factory reads settings from the environment in each uvicorn process.
        os.environ["SPECTRAL_DATA_DIR"] = str(data_dir)
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]spectral serve[/]: data in {settings.data_dir.resolve()}, "
        f"API on http://{host or settings.host}:{port or settings.port} (docs at /docs)"
    )
    worker_process = None
    if settings.embedded_worker:
        # Imported here: `spectral api` never needs the worker package.
        from worker.process import start_worker_process

        # Migrate before two processes race to create the same SQLite tables.
        upgrade_database(settings)
        worker_process = start_worker_process(settings)
        console.print(f"[bold]spectral serve[/]: embedded worker pid {worker_process.pid}")
    try:
        _run_api(host or settings.host, port or settings.port, 1)
    finally:
        if worker_process is not None:
            _stop_worker(worker_process)


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM lets a running job finish its step), then kill the group."""
    worker.terminate()
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn worker processes.")] = None,
) -> None:
    """Runs only the API (uvicorn), configured from SPECTRAL_* environment variables."""
    _configure_logging()
    settings = Settings()
    _run_api(host or settings.host, port or settings.port, workers or settings.api_workers)


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(help="Comma-separated queues. Default: the default queue and routed ones."),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Pool processes (one job each).")] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Runs a Celery worker for pruning jobs (broker from SPECTRAL_BROKER_URL)."""
    from worker.celery_app import app as celery_app
    from worker.process import all_queues, worker_argv

    settings = Settings()
    names = queues.split(",") if queues else all_queues(settings)
    celery_app.worker_main(worker_argv(names, concurrency=concurrency, loglevel=loglevel))


if __name__ == "__main__":
    app()
