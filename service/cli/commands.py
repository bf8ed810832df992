"""The ``spectral`` Typer app (`app`): every command, registered from the module that owns it.

- `server`: ``serve``, ``api``, ``worker`` (the ``[service]`` extra);
- `local`: ``prune``, a local ``.keras`` file with the library alone;
- `quickstart`: ``quickstart``, a small trained model and data to try everything on;
- `remote`: the client commands (``push``, ``datasets``, ``jobs``, ``models``, ``aliases``,
  ``pull``, ``report``; the ``[client]`` extra);
- `tokens`: ``tokens new``, a scoped API token for the server's token file.
"""

from __future__ import annotations

import typer

from service.cli import local, quickstart, remote, server, tokens
from service.cli.output import EXIT_CODES_HELP

app = typer.Typer(
    help="Spectral pruning: the library's pruning, the registry service and its workers, and "
    "a client for CI pipelines (SPECTRAL_URL, SPECTRAL_API_TOKEN). Every client command takes "
    "--json: one JSON document on stdout, messages on stderr.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
)

for local_command in (server.serve, server.api, server.worker, local.prune):
    app.command()(local_command)
app.command()(quickstart.quickstart)
for client_command in (remote.push, remote.pull, remote.report):
    app.command(epilog=EXIT_CODES_HELP)(client_command)
app.add_typer(remote.datasets_app, name="datasets")
app.add_typer(remote.jobs_app, name="jobs")
app.add_typer(remote.models_app, name="models")
app.add_typer(remote.aliases_app, name="aliases")
app.add_typer(tokens.tokens_app, name="tokens")
