"""A real API (``spectral api``, no worker: jobs stay queued) shared by the client's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.api import RunningApi, launch_api, stop_api


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    running = launch_api(None, tmp_path_factory.mktemp("client-api"))
    try:
        yield running
    finally:
        stop_api(running)
