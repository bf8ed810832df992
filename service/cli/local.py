"""``spectral prune``: prunes a local ``.keras`` file with the library alone, no server.

It needs keras and the library only (a plain ``pip install spectral-pruning`` plus a Keras
backend), and imports them inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from service.cli.output import console, emit_json
from service.cli.server import configure_logging

BACKEND_EXTRA = 'pip install "spectral-pruning[tensorflow]" (or jax, with KERAS_BACKEND=jax)'


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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON document on stdout.")
    ] = False,
) -> None:
    """Prunes a .keras file locally, without a server (e.g. in a CI step before deploy)."""
    try:
        import keras

        import spectral
    except ModuleNotFoundError as exc:
        # Keras imports its backend on first import: a plain install has none.
        console.print(
            f"[bold red]error[/]: `spectral prune` needs a Keras backend ({exc.name} is not "
            f"installed): {escape(BACKEND_EXTRA)}"
        )
        raise typer.Exit(code=2) from exc

    configure_logging()
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
    if as_json:
        emit_json(summary)
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
