"""The client commands: ``spectral push``, ``datasets``, ``jobs``, ``models``, ``aliases``,
``pull`` and ``report``, on `service.client.Client`.

Each talks to ``--url`` (``$SPECTRAL_URL``, default ``http://127.0.0.1:8000``) with ``--token``
(``$SPECTRAL_API_TOKEN``), prints what it got on stdout (one JSON document with ``--json``) and
messages on stderr, and exits with the codes of `service.cli.output.EXIT_CODES_HELP`. The
client is imported inside each command, so a plain install names the ``[client]`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.table import Table

from service.cli.output import (
    EXIT_CODES_HELP,
    client_errors,
    console,
    emit_json,
    fail,
    needs_client_extra,
    stdout,
)

if TYPE_CHECKING:
    from service.api.schemas import JobPublic
    from service.client import Client

# The client's default, repeated here so --help shows it without importing the client.
DEFAULT_URL = "http://127.0.0.1:8000"

Url = Annotated[
    str,
    typer.Option("--url", envvar="SPECTRAL_URL", help="The server's base URL."),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="SPECTRAL_API_TOKEN",
        show_default=False,
        help="API token, sent as 'Authorization: Bearer <token>'.",
    ),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (messages on stderr).")
]
Timeout = Annotated[
    float | None,
    typer.Option(min=0, help="With --wait: give up waiting after this many seconds (exit 3)."),
]
CancelOnInterrupt = Annotated[
    bool,
    typer.Option(help="With --wait: Ctrl-C cancels the job without asking."),
]

jobs_app = typer.Typer(
    help="Pruning jobs: submit, follow, list, cancel.", epilog=EXIT_CODES_HELP, no_args_is_help=True
)
models_app = typer.Typer(
    help="Models and their versions.", epilog=EXIT_CODES_HELP, no_args_is_help=True
)
aliases_app = typer.Typer(
    help="Aliases: set (compare-and-set), history, rollback.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
)
datasets_app = typer.Typer(
    help="Datasets (.npz with arrays x and y) for metric jobs and gates.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
)


@contextmanager
def connect(command: str, url: str, token: str | None, as_json: bool) -> Iterator[Client]:
    """A client for the command, its errors turned into messages and exit codes."""
    with needs_client_extra(command):
        from service.client import Client
    # SPECTRAL_RETRIES / SPECTRAL_RETRY_BACKOFF_S: how hard to try before exit 4.
    retries = int(os.environ.get("SPECTRAL_RETRIES", "4"))
    backoff = float(os.environ.get("SPECTRAL_RETRY_BACKOFF_S", "0.5"))
    with client_errors(as_json), Client(url, token, retries=retries, backoff=backoff) as client:
        yield client


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json")


# -- push, pull, report -------------------------------------------------------------------------


def push(
    file: Annotated[Path, typer.Argument(help="A .keras model file.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="The model's name (a lowercase slug).")],
    max_batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="This version's batching limit in rows (1: no batching)."),
    ] = None,
    max_delay_ms: Annotated[
        float | None,
        typer.Option(min=0, max=1000, help="How long a forward waits for more rows, in ms."),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Uploads FILE as a new model NAME (version 1), or as the next version of NAME."""
    with connect("push", url, token, as_json) as client:
        version = client.push_model(
            file, name, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms
        )
    if as_json:
        emit_json(_dump(version))
        return
    stdout.print(
        f"{version.model_id} version {version.version}: {version.param_count} params, "
        f"{version.spectral_units} Spectral units, {version.size_bytes} bytes, "
        f"sha256 {version.sha256[:12]}",
        highlight=False,
    )


def pull(
    name: Annotated[str, typer.Argument(help="The model.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .keras file.")],
    version: Annotated[int | None, typer.Option(min=1, help="The version; default latest.")] = None,
    alias: Annotated[str | None, typer.Option(help="An alias instead of a version.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Downloads a version's exact .keras bytes (the latest, --version N or --alias A)."""
    with connect("pull", url, token, as_json) as client:
        number = client.pull(name, output, version=version, alias=alias)
    if as_json:
        emit_json({"model_id": name, "version": number, "path": str(output)})
        return
    stdout.print(f"wrote {escape(str(output))}: {name} version {number}", highlight=False)


def report(
    name: Annotated[str, typer.Argument(help="The model.", show_default=False)],
    version: Annotated[
        int, typer.Argument(min=1, help="A version a job made.", show_default=False)
    ],
    png: Annotated[Path | None, typer.Option(help="Also save the report's PNG here.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """The pruning report of a version: units, params and file size before and after, the
    metric before and after, the percentile; --png saves its plot."""
    with connect("report", url, token, as_json) as client:
        document = client.report(name, version)
        if png is not None:
            png.write_bytes(client.report_png(name, version))
            console.print(f"wrote {escape(str(png))}", highlight=False)
    if as_json:
        emit_json(document)
        return
    stdout.print(report_table(name, version, document))


def report_table(name: str, version: int, report: dict[str, Any]) -> Table:
    """The report's before/after figures as a table."""
    table = Table(title=f"{name} version {version}: {report.get('method', '?')} pruning")
    for column in ("", "before", "after", "change"):
        table.add_column(column, justify="left" if not column else "right")

    def row(label: str, before: Any, after: Any, unit: str = "") -> None:
        change = ""
        if isinstance(before, int | float) and isinstance(after, int | float) and before:
            change = f"{(after - before) / abs(before):+.1%}"
        table.add_row(label, _number(before, unit), _number(after, unit), change)

    units_before, units_after = report.get("units_before", {}), report.get("units_after", {})
    row("Spectral units", sum(units_before.values()), sum(units_after.values()))
    for layer, units in units_before.items():
        row(f"  {layer}", units, units_after.get(layer))
    row("params", report.get("params_before"), report.get("params_after"))
    row("file size", report.get("artifact_bytes_before"), report.get("artifact_bytes_after"), "B")
    metric = report.get("metric_name") or "metric"
    row(metric, report.get("metric_before"), report.get("metric_after"))
    row("latency", report.get("latency_ms_before"), report.get("latency_ms_after"), " ms")
    table.caption = f"percentile {_number(report.get('percentile'))}, scope {report.get('scope')}"
    return table


def _number(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}{unit}"
    if isinstance(value, int) and unit == "B":
        return f"{value:,} B"
    return f"{value}{unit}"


# -- datasets -----------------------------------------------------------------------------------


@datasets_app.command("push")
def datasets_push(
    file: Annotated[Path, typer.Argument(help=".npz with arrays x and y.", show_default=False)],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Uploads FILE; prints its id (the same bytes always get the same id)."""
    with connect("datasets push", url, token, as_json) as client:
        dataset = client.push_dataset(file)
    if as_json:
        emit_json(_dump(dataset))
        return
    stdout.print(
        f"{dataset.id}: x {dataset.x_shape} {dataset.x_dtype}, y {dataset.y_shape} "
        f"{dataset.y_dtype}",
        highlight=False,
    )


# -- jobs ---------------------------------------------------------------------------------------


@jobs_app.command("submit")
def jobs_submit(
    name: Annotated[str, typer.Argument(help="The model to prune.", show_default=False)],
    method: Annotated[
        Literal["percentile", "metric", "pretrain"], typer.Option(help="How to prune.")
    ] = "percentile",
    version: Annotated[int | None, typer.Option(min=1, help="Version; default latest.")] = None,
    alias: Annotated[str | None, typer.Option(help="Prune the version this alias names.")] = None,
    percentile: Annotated[float | None, typer.Option(help="percentile: the cutoff.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset id: what metric jobs and the gate evaluate on.")
    ] = None,
    data: Annotated[Path | None, typer.Option(help=".npz to upload and use as --dataset.")] = None,
    max_delta_percent: Annotated[
        float | None, typer.Option(help="metric: allowed relative metric loss, %.")
    ] = None,
    compare_metric: Annotated[str | None, typer.Option(help="metric: the metric kept.")] = None,
    percentile_step: Annotated[float | None, typer.Option(help="metric: search step.")] = None,
    scope: Annotated[
        Literal["global", "layer"] | None, typer.Option(help="One cutoff, or one per layer.")
    ] = None,
    min_units: Annotated[int | None, typer.Option(help="Fewest nodes a layer keeps.")] = None,
    epochs: Annotated[int | None, typer.Option(help="pretrain: eigenvalue epochs.")] = None,
    fine_tune_epochs: Annotated[
        int | None, typer.Option(help="pretrain: fine-tune epochs.")
    ] = None,
    reconstruct: Annotated[
        Literal["least_squares", "mean"] | None,
        typer.Option(help="Re-fit consumers of removed nodes on calibration rows."),
    ] = None,
    calibration_dataset: Annotated[
        str | None, typer.Option(help="Dataset id of the calibration rows (default --dataset).")
    ] = None,
    recover_epochs: Annotated[
        int | None, typer.Option(help="Train the pruned model this many epochs.")
    ] = None,
    recover_dataset: Annotated[
        str | None, typer.Option(help="Dataset id recovery trains on (default --dataset).")
    ] = None,
    distill: Annotated[
        bool, typer.Option(help="Recovery also learns the original's outputs.")
    ] = False,
    steps: Annotated[int | None, typer.Option(help="Remove the nodes in this many rounds.")] = None,
    promote: Annotated[
        str | None,
        typer.Option(help="Gate: move this alias to the new version if the metric held."),
    ] = None,
    max_drop_percent: Annotated[
        float | None,
        typer.Option(help="Gate: the largest drop that still promotes (points for accuracy)."),
    ] = None,
    promote_metric: Annotated[
        str, typer.Option(help='Gate: the metric compared ("loss" or a compiled metric).')
    ] = "accuracy",
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the job; exit with its outcome.")
    ] = False,
    timeout: Timeout = None,
    cancel_on_interrupt: CancelOnInterrupt = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Resubmitting with the same key returns the same job.")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Submits a pruning job of NAME (POST /prune); with --wait, follows it to the end.

    With --promote ALIAS --max-drop-percent X, the worker moves ALIAS to the new version only
    if the metric on the dataset dropped by at most X; with --wait, a refusal exits 1.
    """
    if (promote is None) != (max_drop_percent is None):
        fail("--promote and --max-drop-percent go together", 2, as_json=as_json)
    if data is not None and dataset is not None:
        fail("give either --dataset or --data, not both", 2, as_json=as_json)
    fields: dict[str, Any] = {
        "model_id": name,
        "method": method,
        "version": version,
        "alias": alias,
        "percentile": percentile,
        "max_delta_percent": max_delta_percent,
        "compare_metric": compare_metric,
        "percentile_step": percentile_step,
        "scope": scope,
        "min_units": min_units,
        "epochs": epochs,
        "fine_tune_epochs": fine_tune_epochs,
        "reconstruct": reconstruct,
        "calibration_dataset": calibration_dataset,
        "recover_epochs": recover_epochs,
        "recover_dataset": recover_dataset,
        "distill": distill or None,
        "steps": steps,
    }
    with connect("jobs submit", url, token, as_json) as client:
        if data is not None:
            dataset = client.push_dataset(data).id
            console.print(f"uploaded {escape(str(data))} as dataset {dataset}", highlight=False)
        fields["dataset_id"] = dataset
        if promote is not None:
            fields["promote"] = {
                "alias": promote,
                "max_drop_percent": max_drop_percent,
                "metric": promote_metric,
            }
        # Only what was given: the server's defaults stay the server's.
        given = {key: value for key, value in fields.items() if value is not None}
        accepted = client.submit(idempotency_key=idempotency_key, **given)
        if not wait:
            if as_json:
                emit_json(_dump(accepted))
            else:
                stdout.print(accepted.job_id, highlight=False)
            console.print(
                f"job {accepted.job_id} {accepted.status}; follow it with "
                f"`spectral jobs wait {accepted.job_id}`",
                highlight=False,
            )
            return
        console.print(f"job {accepted.job_id} {accepted.status}", highlight=False)
        job = _wait(client, accepted.job_id, timeout, cancel_on_interrupt, as_json)
    _finish(job, as_json)


def _wait(
    client: Client, job_id: str, timeout: float | None, cancel_on_interrupt: bool, as_json: bool
) -> JobPublic:
    from service.cli.waiting import wait_for_job

    return wait_for_job(
        client, job_id, timeout=timeout, cancel_on_interrupt=cancel_on_interrupt, as_json=as_json
    )


def _finish(job: JobPublic, as_json: bool) -> None:
    from service.cli.waiting import finish

    finish(job, as_json=as_json)


@jobs_app.command("wait")
def jobs_wait(
    job_id: Annotated[str, typer.Argument(help="The job.", show_default=False)],
    timeout: Timeout = None,
    cancel_on_interrupt: CancelOnInterrupt = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Follows a job to its end; exits 0 succeeded, 1 gate refused, 3 failed/cancelled/timeout."""
    with connect("jobs wait", url, token, as_json) as client:
        job = _wait(client, job_id, timeout, cancel_on_interrupt, as_json)
    _finish(job, as_json)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job.", show_default=False)],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """A job's status, progress, step, result (and promotion), error."""
    with connect("jobs show", url, token, as_json) as client:
        job = client.job(job_id)
    if as_json:
        emit_json(_dump(job))
        return
    stdout.print(_job_line(job), highlight=False)
    if job.result is not None and job.result.promotion is not None:
        promotion = job.result.promotion
        verdict = "promoted" if promotion.promoted else "refused"
        stdout.print(f"  promotion {verdict}: {escape(promotion.reason)}", highlight=False)
    if job.error:
        stdout.print(f"  error: {escape(job.error)}", highlight=False)


def _job_line(job: JobPublic) -> str:
    made = f" -> version {job.result.version}" if job.result is not None else ""
    step = f" ({escape(job.step)})" if job.step and job.status == "running" else ""
    return (
        f"{job.id}  {job.status}{step} {job.progress:.0%}  {job.model_id} v{job.version} "
        f"{job.method}{made}"
    )


@jobs_app.command("list")
def jobs_list(
    model: Annotated[str | None, typer.Option(help="Only this model's jobs.")] = None,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
        typer.Option(help="Only jobs in this status."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Jobs, newest first."""
    with connect("jobs list", url, token, as_json) as client:
        jobs = client.jobs(model_id=model, status=status, limit=limit)
    if as_json:
        emit_json(_dump(jobs))
        return
    for job in jobs.data:
        stdout.print(_job_line(job), highlight=False)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="The job.", show_default=False)],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """A queued job never starts; a running one stops at its next step."""
    with connect("jobs cancel", url, token, as_json) as client:
        job = client.cancel(job_id)
    if as_json:
        emit_json(_dump(job))
        return
    stdout.print(f"{job.id}: cancel requested ({job.status})", highlight=False)


# -- models -------------------------------------------------------------------------------------


@models_app.command("list")
def models_list(url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False) -> None:
    """Every model: latest version, aliases, number of versions."""
    with connect("models list", url, token, as_json) as client:
        models = client.models()
    if as_json:
        emit_json(_dump(models))
        return
    table = Table("model", "latest", "aliases", "versions")
    for model in models.data:
        aliases = ", ".join(f"{a}={v}" for a, v in sorted(model.aliases.items()))
        table.add_row(model.id, str(model.latest_version), aliases, str(len(model.versions)))
    stdout.print(table)


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="The model.", show_default=False)],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """A model's versions (params, Spectral units, size, parent, job) and aliases."""
    with connect("models show", url, token, as_json) as client:
        model = client.model(name)
    if as_json:
        emit_json(_dump(model))
        return
    aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(model.aliases.items())) or "none"
    table = Table(
        "version",
        "parent",
        "params",
        "Spectral units",
        "bytes",
        "job",
        title=f"{model.id} (aliases: {aliases})",
    )
    for v in model.versions:
        table.add_row(
            str(v.version),
            str(v.parent_version or "-"),
            str(v.param_count),
            str(v.spectral_units),
            str(v.size_bytes),
            v.job_id or "-",
        )
    stdout.print(table)


# -- aliases ------------------------------------------------------------------------------------


@aliases_app.command("set")
def aliases_set(
    name: Annotated[str, typer.Argument(help="The model.", show_default=False)],
    alias: Annotated[str, typer.Argument(help="The alias.", show_default=False)],
    version: Annotated[int, typer.Argument(min=1, help="The version.", show_default=False)],
    if_version: Annotated[
        int | None,
        typer.Option(min=1, help="Only if the alias points at this version now (else exit 2)."),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Points ALIAS at VERSION; with --if-version, a compare-and-set that refuses (409, exit 2)
    when another pipeline moved the alias first."""
    with connect("aliases set", url, token, as_json) as client:
        moved = client.set_alias(name, alias, version, if_version=if_version)
    if as_json:
        emit_json(_dump(moved))
        return
    stdout.print(f"{moved.model_id}: {moved.alias} -> version {moved.version}", highlight=False)


@aliases_app.command("history")
def aliases_history(
    name: Annotated[str, typer.Argument(help="The model.", show_default=False)],
    alias: Annotated[str, typer.Argument(help="The alias.", show_default=False)],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many moves.")] = 100,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Every move of ALIAS, newest first: from, to, when, why and by which job."""
    with connect("aliases history", url, token, as_json) as client:
        history = client.alias_history(name, alias, limit=limit)
    if as_json:
        emit_json(_dump(history))
        return
    table = Table("at", "from", "to", "reason", "job", title=f"{name}: {alias}")
    for event in history.data:
        table.add_row(
            event.at.isoformat(timespec="seconds"),
            _version(event.from_version),
            _version(event.to_version),
            event.reason,
            event.job_id or "-",
        )
    stdout.print(table)


def _version(number: int | None) -> str:
    return "-" if number is None else str(number)


@aliases_app.command("rollback")
def aliases_rollback(
    name: Annotated[str, typer.Argument(help="The model.", show_default=False)],
    alias: Annotated[str, typer.Argument(help="The alias.", show_default=False)],
    if_version: Annotated[
        int | None, typer.Option(min=1, help="Only if the alias points at this version now.")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Moves ALIAS back to the version it pointed at before its latest move."""
    with connect("aliases rollback", url, token, as_json) as client:
        moved = client.rollback(name, alias, if_version=if_version)
    if as_json:
        emit_json(_dump(moved))
        return
    stdout.print(f"{moved.model_id}: {moved.alias} -> version {moved.version}", highlight=False)
