"""The ``spectral`` command line: run the API (and, with ``serve``, the embedded services)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.logging import RichHandler

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
    """Runs the API on the embedded defaults (SQLite registry under --data-dir)."""
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
    _run_api(host or settings.host, port or settings.port, 1)


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


if __name__ == "__main__":
    app()
