"""The server commands: ``spectral serve`` (the API plus one embedded worker process),
``spectral api`` (the API only) and ``spectral worker`` (a worker).

Workers are started by module name (``python -m worker``), so nothing here imports the worker
package. The server packages are imported inside the commands: without the ``[service]``
extra they say which extra to install.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from service.cli.output import console

if TYPE_CHECKING:
    from service.settings import Settings

SERVICE_EXTRA = 'pip install "spectral-pruning[service]"'


def configure_logging(level: str | None = None) -> None:
    """Rich log lines, at ``level`` (the server commands pass `Settings.log_level`; the
    library-only commands, which may run without the settings' dependencies, read
    SPECTRAL_LOG_LEVEL themselves)."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=level or os.environ.get("SPECTRAL_LOG_LEVEL", "INFO"),
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    # One line per request through Rich costs about 0.4 ms of server CPU, as much as a whole
    # predict; access lines are plain text, written by the standard library.
    access = logging.getLogger("uvicorn.access")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access.handlers = [handler]
    access.propagate = False


@contextmanager
def _needs_service_extra(command: str) -> Iterator[None]:
    """Turns a missing server dependency into a message that names the extra to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        # Escaped: rich would read "[service]" as markup and drop it.
        console.print(
            f"[bold red]error[/]: `spectral {command}` needs the service extra "
            f"({exc.name} is not installed): {escape(SERVICE_EXTRA)}"
        )
        raise typer.Exit(code=2) from exc


def worker_command(
    queues: Sequence[str] | None = None, *, concurrency: int = 1, loglevel: str = "INFO"
) -> list[str]:
    """The command line of a worker process (``python -m worker``); queues default to the
    worker's settings' `all_queues`."""
    argv = [sys.executable, "-m", "worker", "--concurrency", str(concurrency)]
    if queues:
        argv += ["--queues", ",".join(queues)]
    return argv + ["--loglevel", loglevel]


def start_worker(settings: Settings, **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a worker for ``settings`` as a child in its own process group, so the caller can
    stop it together with its pool children."""
    env = {**os.environ, **settings.to_env(), **popen_kwargs.pop("env", {})}
    return subprocess.Popen(worker_command(), env=env, start_new_session=True, **popen_kwargs)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def _shared_metrics_dir() -> Iterator[Path]:
    """Points PROMETHEUS_MULTIPROC_DIR at an empty directory for this run's API processes, so
    a scrape of any of them reports the totals of all.

    A directory given in the variable (an emptyDir volume, say) is emptied of metric files
    first: files of a previous run would be summed into this one. Otherwise a fresh temporary
    directory is made and removed at exit, never one under the data dir, which replicas on
    several machines may share. Set before uvicorn imports the app, in this process and its
    workers: prometheus-client reads the variable once, at import.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        yield directory
        return
    directory = Path(tempfile.mkdtemp(prefix="spectral-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    try:
        yield directory
    finally:
        del os.environ[MULTIPROC_ENV]
        shutil.rmtree(directory, ignore_errors=True)


def _run_api(host: str, port: int, workers: int, *, access_log: bool = True) -> None:
    import uvicorn

    uvicorn.run(
        "service.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=access_log,
    )


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Registry, artifacts and embedded broker directory.")
    ] = None,
) -> None:
    """Runs the API on the embedded defaults (SQLite registry under --data-dir), and one
    Celery worker process on the embedded SQLite broker unless SPECTRAL_EMBEDDED_WORKER=false."""
    with _needs_service_extra("serve"):
        from service.db import upgrade_database
        from service.settings import Settings
    if data_dir is not None:
        # The factory reads settings from the environment in each uvicorn process.
        os.environ["SPECTRAL_DATA_DIR"] = str(data_dir)
    settings = Settings()
    configure_logging(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]spectral serve[/]: data in {settings.data_dir.resolve()}, "
        f"API on http://{host or settings.host}:{port or settings.port} (docs at /docs)"
    )
    worker_process = None
    if settings.embedded_worker:
        # Migrate before two processes race to create the same SQLite tables.
        upgrade_database(settings)
        worker_process = start_worker(settings)
        console.print(f"[bold]spectral serve[/]: embedded worker pid {worker_process.pid}")
    # uvicorn restores the previous SIGTERM handler after its graceful shutdown and raises the
    # signal again; with the default handler that would end this process before `finally`
    # stops the worker, leaving it orphaned (docker stop, systemd and Kubernetes send SIGTERM).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with _needs_service_extra("serve"), _shared_metrics_dir():
            _run_api(
                host or settings.host, port or settings.port, 1, access_log=settings.access_log
            )
    finally:
        if worker_process is not None:
            _stop_worker(worker_process, settings.job_shutdown_s)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# After its job window the worker takes up to 5 s to release a job stuck in a step, then Celery
# exits; the group is killed only past all of that.
_WORKER_EXIT_GRACE_S = 20.0


def _stop_worker(worker: subprocess.Popen[bytes], job_shutdown_s: float) -> None:
    """SIGTERM: the worker lets its job run for ``job_shutdown_s``, then releases it back to
    the queue; the group is killed only if the worker outlives that and its own grace."""
    worker.terminate()
    try:
        worker.wait(timeout=job_shutdown_s + _WORKER_EXIT_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)


def api(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn worker processes.")] = None,
) -> None:
    """Runs only the API (uvicorn), configured from SPECTRAL_* environment variables."""
    with _needs_service_extra("api"):
        from service.settings import Settings

        settings = Settings()
        configure_logging(settings.log_level)
        # As in `serve`: a re-raised SIGTERM would end the process before the metrics
        # directory is removed.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        with _shared_metrics_dir():
            _run_api(
                host or settings.host,
                port or settings.port,
                workers or settings.api_workers,
                access_log=settings.access_log,
            )


def worker(
    queues: Annotated[
        str | None,
        typer.Option(help="Comma-separated queues. Default: the default queue and routed ones."),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Pool processes (one job each).")] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Runs a Celery worker for pruning jobs (broker from SPECTRAL_BROKER_URL)."""
    with _needs_service_extra("worker"):
        import celery  # noqa: F401  (checked here, so a missing extra is named, not a traceback)
    argv = worker_command(
        queues.split(",") if queues else None, concurrency=concurrency, loglevel=loglevel
    )
    # The worker replaces this process, so signals from a supervisor reach Celery directly.
    os.execv(sys.executable, argv)
