"""``--wait``: follows a job until it ends, on a terminal with a live progress bar and the job's
step, elsewhere (CI logs) with a plain line whenever the status or step changes and at least
every `PLAIN_EVERY_S` seconds. Ctrl-C asks whether to cancel the job (``--cancel-on-interrupt``
cancels without asking).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from service.cli.output import console, emit_json, fail
from service.client.errors import EXIT_GATE_REFUSED, EXIT_JOB_FAILED, EXIT_OK

if TYPE_CHECKING:
    from service.api.schemas import JobPublic
    from service.client import Client

PLAIN_EVERY_S = 10.0


class PlainProgress:
    """One line per change of status or step, and one every `PLAIN_EVERY_S` seconds."""

    def __init__(self) -> None:
        self._last: tuple[str, str] | None = None
        self._printed_at = 0.0

    def __call__(self, job: JobPublic) -> None:
        now = time.monotonic()
        state = (job.status, job.step)
        if state != self._last or now - self._printed_at >= PLAIN_EVERY_S:
            step = f" - {job.step}" if job.step else ""
            console.print(
                f"job {job.id}: {job.status} {job.progress:.0%}{escape(step)}", highlight=False
            )
            self._last, self._printed_at = state, now


def wait_for_job(
    client: Client,
    job_id: str,
    *,
    timeout: float | None,
    cancel_on_interrupt: bool,
    as_json: bool,
    poll_s: float = 0.5,
) -> JobPublic:
    """The job once it ended; exits 3 (after cancelling when asked to) on Ctrl-C."""
    try:
        if console.is_terminal:
            columns = (
                TextColumn("[bold]{task.fields[status]}[/]"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
            )
            with Progress(*columns, console=console, transient=False) as bar:
                task = bar.add_task("queued", total=1.0, status="queued")

                def show(job: JobPublic) -> None:
                    bar.update(
                        task,
                        completed=job.progress,
                        description=escape(job.step or ""),
                        status=job.status,
                    )

                return client.wait(job_id, progress=show, timeout=timeout, poll_s=poll_s)
        return client.wait(job_id, progress=PlainProgress(), timeout=timeout, poll_s=poll_s)
    except KeyboardInterrupt:
        _interrupted(client, job_id, cancel_on_interrupt=cancel_on_interrupt, as_json=as_json)


def _interrupted(
    client: Client, job_id: str, *, cancel_on_interrupt: bool, as_json: bool
) -> NoReturn:
    cancel = cancel_on_interrupt
    if not cancel and sys.stdin.isatty():
        try:
            cancel = typer.confirm(f"\nCancel job {job_id}?", default=False, err=True)
        except (KeyboardInterrupt, typer.Abort):
            cancel = False
    if cancel:
        job = client.cancel(job_id)
        fail(
            f"interrupted: cancel requested for job {job_id} (it was {job.status})",
            EXIT_JOB_FAILED,
            as_json=as_json,
            document=job.model_dump(mode="json"),
        )
    fail(
        f"interrupted: job {job_id} goes on; follow it with `spectral jobs wait {job_id}` or "
        f"stop it with `spectral jobs cancel {job_id}`",
        EXIT_JOB_FAILED,
        as_json=as_json,
        document={
            "error": {
                "code": "interrupted",
                "message": "stopped waiting",
                "details": {"job_id": job_id},
            }
        },
    )


def job_exit_code(job: JobPublic) -> int:
    """0 succeeded (and promoted, if asked), 1 succeeded but the gate refused, 3 otherwise."""
    if job.status != "succeeded":
        return EXIT_JOB_FAILED
    promotion = job.result.promotion if job.result is not None else None
    return EXIT_GATE_REFUSED if promotion is not None and not promotion.promoted else EXIT_OK


def finish(job: JobPublic, *, as_json: bool) -> None:
    """Prints how the job ended (the job as JSON with ``--json``) and exits with its code."""
    code = job_exit_code(job)
    if as_json:
        emit_json(job.model_dump(mode="json"))
    if job.status == "succeeded" and job.result is not None:
        console.print(
            f"[bold green]succeeded[/]: job {job.id} made {job.result.model_id} version "
            f"{job.result.version}",
            highlight=False,
        )
        promotion = job.result.promotion
        if promotion is not None:
            verdict = "[bold green]promoted[/]" if promotion.promoted else "[bold red]refused[/]"
            console.print(
                f"promotion gate {verdict}: alias {escape(promotion.alias)}; "
                f"{escape(promotion.reason)}",
                highlight=False,
            )
    elif job.status != "succeeded":
        console.print(
            f"[bold red]{job.status}[/]: job {job.id}"
            + (f": {escape(job.error)}" if job.error else ""),
            highlight=False,
        )
    raise typer.Exit(code=code)
