"""What the commands print, and the exit codes: one JSON document on stdout with ``--json``,
readable text otherwise, and every message on stderr.

The client's errors carry their exit code (`service.client.errors`); `client_errors` turns
them into a message (or, with ``--json``, the error document) and that code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

# Messages, progress and tables for people go to stderr; stdout carries only what a script
# reads (the --json document, or a pulled file's bytes when asked).
console = Console(stderr=True, soft_wrap=True)
stdout = Console(soft_wrap=True)

CLIENT_EXTRA = 'pip install "spectral-pruning[client]"'
EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 the job succeeded but the promotion gate refused it (the alias "
    "is unchanged); 2 bad usage or a 4xx answer (the server's message is printed); 3 the job "
    "failed or was cancelled, or --wait timed out; 4 the server is unreachable or answered "
    "5xx (after retrying connection errors and 502/503/504 with backoff)."
)


def emit_json(document: Any) -> None:
    """Prints one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    console.print(f"[bold red]error[/]: {escape(message)}")


def fail(message: str, code: int, *, as_json: bool = False, document: Any = None) -> NoReturn:
    """Prints the message on stderr (and the JSON document on stdout) and exits with ``code``."""
    error(message)
    if as_json:
        emit_json(document if document is not None else {"error": {"message": message}})
    raise typer.Exit(code=code)


@contextmanager
def needs_client_extra(command: str) -> Iterator[None]:
    """Turns a missing client dependency into a message that names the extra to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in {"httpx", "pydantic"}:
            raise
        error(
            f"`spectral {command}` needs the client extra ({exc.name} is not installed): "
            f"{CLIENT_EXTRA}"
        )
        raise typer.Exit(code=2) from exc


@contextmanager
def client_errors(as_json: bool) -> Iterator[None]:
    """The client's errors as a message and their exit code (2 for a 4xx, 3 for a job that did
    not finish in time, 4 for an unreachable server or a 5xx)."""
    from pydantic import ValidationError

    from service.client import ApiError, ClientError, ServerUnavailable, WaitTimeout

    try:
        yield
    except ApiError as exc:
        hint = ""
        if exc.code == "alias_conflict" and exc.details:
            hint = f" (the alias points at version {exc.details.get('current_version')} now)"
        fail(
            f"{exc.status_code} {exc.code}: {exc.message}{hint}",
            exc.exit_code,
            as_json=as_json,
            document=exc.to_dict(),
        )
    except (ServerUnavailable, WaitTimeout) as exc:
        fail(str(exc), exc.exit_code, as_json=as_json, document=exc.to_dict())
    except ClientError as exc:
        fail(str(exc), exc.exit_code, as_json=as_json)
    except ValidationError as exc:
        # The server's own request class refused it before sending: the same words as a 422.
        messages = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        fail(
            messages,
            2,
            as_json=as_json,
            document={"error": {"code": "invalid_input", "message": messages}},
        )
    except (OSError, ValueError) as exc:
        fail(
            str(exc),
            2,
            as_json=as_json,
            document={"error": {"code": "invalid_input", "message": str(exc)}},
        )
