"""The arrows between packages point one way: every import of every module, at module level or
inside a function, read from the source with `ast`.

- `spectral` imports nothing of the project: only keras, numpy, matplotlib and the stdlib;
- `service` never imports `worker`;
- service's domain (everything but `service.api` and the `service.cli` launcher) imports no
  FastAPI, Starlette or `service.api`;
- `worker` may import service's domain, never `service.api` or `service.cli`;
- `service.client` speaks HTTP to the service: of the project it imports only itself and the wire
  format (`service.api.schemas`, `service.jobs.params`), so `[client]` installs need no
  TensorFlow, FastAPI, SQLAlchemy or Celery (tests/service/client checks the run time too).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spectral", "service", "worker")
LIBRARY_DEPENDENCIES = {"keras", "numpy", "matplotlib"}
HTTP_PART = ("service.api", "service.cli", "service.client")
WIRE_FORMAT = ("service.api.schemas", "service.jobs.params")
CLIENT_DEPENDENCIES = {"httpx", "pydantic"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, imported module)`` for every import statement in the file, wherever it is."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:  # `from service import api` imports service.api
                yield node.lineno, f"{base}.{alias.name}"


def _all_imports() -> list[tuple[str, str, str]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, imported in _imports(path):
                found.append((_module_name(path), f"{path.relative_to(ROOT)}:{line}", imported))
    return found


IMPORTS = _all_imports()


def _within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


def _violations(importer: tuple[str, ...] | str, forbidden: tuple[str, ...] | str) -> list[str]:
    return [
        f"{where} imports {imported}"
        for module, where, imported in IMPORTS
        if _within(module, importer) and _within(imported, forbidden)
    ]


def test_the_walk_sees_function_level_imports() -> None:
    # worker.tasks imports the runner inside its task function; the walk must see it.
    assert any(m == "worker.tasks" and i == "worker.runner" for m, _, i in IMPORTS)
    assert len({module for module, _, _ in IMPORTS}) > 40


def test_spectral_imports_only_its_dependencies() -> None:
    allowed = LIBRARY_DEPENDENCIES | set(sys.stdlib_module_names) | {"spectral", "__future__"}
    bad = [
        f"{where} imports {imported}"
        for module, where, imported in IMPORTS
        if _within(module, "spectral") and imported.split(".")[0] not in allowed
    ]
    assert not bad, bad


def test_service_never_imports_worker() -> None:
    bad = _violations("service", "worker")
    assert not bad, bad


@pytest.mark.parametrize("forbidden", ["fastapi", "starlette", "service.api"])
def test_service_domain_knows_no_http(forbidden: str) -> None:
    bad = [
        f"{where} imports {imported}"
        for module, where, imported in IMPORTS
        if _within(module, "service")
        and not _within(module, HTTP_PART)
        and _within(imported, forbidden)
    ]
    assert not bad, bad


def test_worker_never_imports_the_http_part() -> None:
    bad = _violations("worker", HTTP_PART)
    assert not bad, bad


def test_client_imports_only_the_wire_format() -> None:
    allowed = CLIENT_DEPENDENCIES | set(sys.stdlib_module_names) | {"__future__"}
    bad = [
        f"{where} imports {imported}"
        for module, where, imported in IMPORTS
        if _within(module, "service.client")
        and not _within(imported, ("service.client", *WIRE_FORMAT))
        and imported.split(".")[0] not in allowed
    ]
    assert not bad, bad
    assert any(_within(m, "service.client") for m, _, _ in IMPORTS)
