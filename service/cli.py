"""The ``spectral`` command line.

- ``spectral prune`` prunes a local ``.keras`` file with the library alone;
- ``spectral serve`` runs the API plus one embedded worker process, ``spectral api`` the API
  only, ``spectral worker`` a worker. Workers are started by module name
  (``python -m worker``), so nothing here imports the worker package.

Only typer and the standard library are imported up front: a plain install (without the
``[service]`` extra) can still prune, and the server commands say which extra they need.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from service.settings import Settings

app = typer.Typer(
    help="Spectral pruning: the library's pruning, the service and its workers.",
    no_args_is_help=True,
)
console = Console(stderr=True)

SERVICE_EXTRA = 'pip install "spectral-pruning[service]"'


def _configure_logging() -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=os.environ.get("SPECTRAL_LOG_LEVEL", "INFO"),
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


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


def _run_api(host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "service.api.app:create_app",
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
    with _needs_service_extra("serve"):
        from service.db import upgrade_database
        from service.settings import Settings
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
        # Migrate before two processes race to create the same SQLite tables.
        upgrade_database(settings)
        worker_process = start_worker(settings)
        console.print(f"[bold]spectral serve[/]: embedded worker pid {worker_process.pid}")
    # uvicorn restores the previous SIGTERM handler after its graceful shutdown and raises the
    # signal again; with the default handler that would end this process before `finally`
    # stops the worker, leaving it orphaned (docker stop, systemd and Kubernetes send SIGTERM).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with _needs_service_extra("serve"):
            _run_api(host or settings.host, port or settings.port, 1)
    finally:
        if worker_process is not None:
            _stop_worker(worker_process)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


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
    with _needs_service_extra("api"):
        from service.settings import Settings

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
    with _needs_service_extra("worker"):
        import celery  # noqa: F401  (checked here, so a missing extra is named, not a traceback)
    argv = worker_command(
        queues.split(",") if queues else None, concurrency=concurrency, loglevel=loglevel
    )
    # The worker replaces this process, so signals from a supervisor reach Celery directly.
    os.execv(sys.executable, argv)


def _read_npz(path: Path, *required: str) -> dict[str, Any]:
    """Arrays of an ``.npz`` file, loaded without pickle; ValueError when one is missing."""
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    missing = [name for name in required if name not in arrays]
    if missing:
        raise ValueError(f"{path} needs arrays {list(required)}. Missing: {missing}")
    return arrays


def _compression_options(
    data: dict[str, Any] | None,
    calibration: Path | None,
    *,
    reconstruct: str | None,
    recover_data: Path | None,
    recover_epochs: int | None,
    distill: bool,
    temperature: float | None,
    steps: int,
    batch_size: int,
) -> dict[str, Any]:
    """`spectral.prune`'s reconstruction, recovery and gradual options from the CLI's.

    Calibration rows come from --calibration, else from --data's x. Recovery trains on
    --recover-data only, never on --data: --data is what the search and the report evaluate
    on, and training on it would leak it into the result. The library checks the rest.
    """
    # Only the options given: plain pruning stays the library's exact default.
    options: dict[str, Any] = {"steps": steps} if steps != 1 else {}
    if reconstruct is not None:
        options["reconstruct"] = reconstruct
        if calibration is not None:
            options["calibration"] = {"x": _read_npz(calibration, "x")["x"]}
        elif data is not None:
            options["calibration"] = {"x": data["x"]}
        else:
            raise ValueError("--reconstruct needs calibration rows: pass --calibration or --data")
    elif calibration is not None:
        raise ValueError("--calibration is only used by --reconstruct")
    if temperature is not None and not distill:
        raise ValueError("--temperature is only used by --distill: pass --distill")
    if distill and recover_epochs is None:
        raise ValueError("--distill trains on the unpruned model's outputs: pass --recover-epochs")
    if recover_data is not None and recover_epochs is None:
        raise ValueError("--recover-data is only used by recovery: pass --recover-epochs")
    if recover_epochs is not None:
        if recover_data is None:
            raise ValueError(
                "--recover-epochs needs --recover-data: an .npz with x and y (y may be left out "
                "with --distill) to train on; --data is evaluation data and is never trained on"
            )
        arrays = _read_npz(recover_data, "x") if distill else _read_npz(recover_data, "x", "y")
        options["recover"] = {
            "x": arrays["x"],
            "y": arrays.get("y"),
            "epochs": recover_epochs,
            "batch_size": batch_size,
        }
        if distill:
            options.update(distill=True, temperature=2.0 if temperature is None else temperature)
    return options


@app.command()
def prune(
    model: Annotated[Path, typer.Argument(help="Trained .keras model with Spectral layers.")],
    output: Annotated[Path, typer.Argument(help="Where to write the pruned .keras model.")],
    percentile: Annotated[
        float | None,
        typer.Option(help="Prune at this percentile. Without it, search with --data."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help=".npz with arrays x and y: evaluation data (needed for the search)."),
    ] = None,
    compare_metric: Annotated[str, typer.Option(help="Metric the search keeps.")] = "accuracy",
    max_delta_percent: Annotated[float, typer.Option(help="Allowed relative loss, %.")] = 10.0,
    percentile_step: Annotated[float, typer.Option(help="Grid step of the search.")] = 5.0,
    scope: Annotated[str, typer.Option(help='"global" or "layer".')] = "global",
    min_units: Annotated[int, typer.Option(help="Fewest nodes a layer keeps.")] = 1,
    report: Annotated[
        Path | None, typer.Option(help="Also write the pruning report as JSON here.")
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help=".npz with array x: calibration rows for --reconstruct (default --data)."
        ),
    ] = None,
    reconstruct: Annotated[
        str | None,
        typer.Option(help='Re-fit consumers of removed nodes: "least_squares" or "mean".'),
    ] = None,
    recover_epochs: Annotated[
        int | None,
        typer.Option(help="Train the pruned model this many epochs on --recover-data."),
    ] = None,
    recover_data: Annotated[
        Path | None,
        typer.Option(
            help=".npz with arrays x and y (y optional with --distill): recovery training data, "
            "required by --recover-epochs. Keep it apart from --data, which is evaluated on."
        ),
    ] = None,
    distill: Annotated[
        bool, typer.Option(help="Recovery also trains on the unpruned model's outputs.")
    ] = False,
    temperature: Annotated[
        float | None, typer.Option(help="Distillation temperature (with --distill; default 2).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Remove the nodes in this many rounds.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Batch size of recovery training.")] = 32,
) -> None:
    """Prunes a .keras file locally, without a server (e.g. in a CI step before deploy)."""
    import keras

    import spectral

    _configure_logging()
    try:
        arrays = _read_npz(data, "x", "y") if data is not None else None
        eval_dictionary = None if arrays is None else {"x": arrays["x"], "y": arrays["y"]}
        loaded = keras.saving.load_model(model, safe_mode=True)
        pruned, result = spectral.prune(
            loaded,
            percentile=percentile,
            eval_dictionary=eval_dictionary,
            compare_metric=compare_metric,
            max_delta_percent=max_delta_percent,
            percentile_step=percentile_step,
            scope=scope,
            min_units=min_units,
            **_compression_options(
                arrays,
                calibration,
                reconstruct=reconstruct,
                recover_data=recover_data,
                recover_epochs=recover_epochs,
                distill=distill,
                temperature=temperature,
                steps=steps,
                batch_size=batch_size,
            ),
        )
    except (ValueError, OSError) as exc:
        console.print(f"[bold red]error[/]: {escape(str(exc))}")
        raise typer.Exit(code=2) from exc
    pruned.save(output)
    summary = result.to_dict()
    if report is not None:
        report.write_text(json.dumps(summary, indent=2))
    metric = ""
    if summary["metric_before"] is not None and summary["metric_after"] is not None:
        metric = (
            f", {compare_metric} {summary['metric_before']:.4g} -> {summary['metric_after']:.4g}"
        )
    console.print(
        f"[bold]pruned[/] at percentile {summary['percentile']:g}: "
        f"units {summary['units_before']} -> {summary['units_after']}, "
        f"params {summary['params_before']} -> {summary['params_after']}{metric}; wrote {output}"
    )


if __name__ == "__main__":
    app()
