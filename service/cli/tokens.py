"""``spectral tokens new``: a scoped API token and the token-file entry that grants it."""

from __future__ import annotations

from typing import Annotated

import typer

from service.cli.output import console, emit_json, fail

tokens_app = typer.Typer(
    help="Scoped API tokens for SPECTRAL_TOKENS_FILE (read or write, on some models).",
    no_args_is_help=True,
)


@tokens_app.command("new")
def new(
    name: Annotated[str, typer.Option(help="Who holds the token (shown in alias history).")],
    scope: Annotated[str, typer.Option(help="read | write.")] = "read",
    models: Annotated[
        list[str],
        typer.Option(
            "--models",
            help="Model names it may see, or prefixes ending in '*' (e.g. 'team-a-*'); "
            "repeat the option for several.",
        ),
    ] = [],  # noqa: B006 (typer reads the default; it is never mutated)
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Makes a random token and prints it once, with the TOML entry to append to the token
    file (which keeps only its sha256). Restart the API to load the new entry."""
    from service.tokens import TokenFileError, new_token_entry

    if scope not in ("read", "write"):
        fail(f"--scope must be read or write, got {scope!r}", 2, as_json=as_json)
    if not models:
        fail("name at least one model or prefix with --models", 2, as_json=as_json)
    try:
        token, entry = new_token_entry(name, scope, models)  # type: ignore[arg-type]
    except TokenFileError as exc:
        fail(str(exc), 2, as_json=as_json)
    if as_json:
        emit_json({"token": token, "entry": entry})
        return
    console.print("Token (shown once; the file keeps only its hash):")
    print(token)  # noqa: T201 (stdout, so a script can capture it)
    console.print("\nAppend to SPECTRAL_TOKENS_FILE:")
    print(entry, end="")  # noqa: T201
