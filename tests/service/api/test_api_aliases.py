"""Aliases over HTTP against a real uvicorn server: compare-and-set (409 alias_conflict),
history, rollback, and the checks of ``promote`` on ``POST /prune``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.api.schemas import AliasHistoryPublic, AliasPublic, ErrorBody
from service.artifacts import ArtifactStore
from service.db import Database
from service.model_loading import compile_config_from_archive
from service.registry import Registry
from service.settings import Settings
from tests.support.api import RunningApi, launch_api, stop_api
from tests.support.digits import digits_npz

TOKEN = "alias-test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, model_bytes: bytes) -> Iterator[RunningApi]:
    """One server with model ``digits`` at versions 1 and 2 and a dataset.

    The versions are written into the server's registry directly, without the upload sandbox
    (seconds per upload, tested with the uploads): alias routes never read an artifact.
    """
    server = launch_api({"SPECTRAL_API_TOKEN": TOKEN}, tmp_path_factory.mktemp("api"))
    settings = Settings(data_dir=server.data_dir)
    compile_config = compile_config_from_archive(model_bytes)
    registry = Registry(
        Database(settings),
        ArtifactStore(settings.artifact_root),
        inspect=lambda _data: {"compile_config": compile_config},
    )
    registry.create_model("digits", model_bytes)
    registry.add_version("digits", model_bytes)
    registry.database.dispose()
    with httpx.Client(base_url=server, timeout=120, headers=AUTH) as client:
        dataset = client.post(
            "/datasets", files={"file": ("d.npz", digits_npz(n=64), "application/octet-stream")}
        )
        assert dataset.status_code in (200, 201), dataset.text
        server.env["DATASET_ID"] = dataset.json()["id"]
    yield server
    stop_api(server)


@pytest.fixture
def client(api: RunningApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=60, headers=AUTH) as c:
        yield c


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = ErrorBody.model_validate(response.json()).error
    assert error.code == code, response.text
    return error.model_dump()


def _put(client: httpx.Client, alias: str, body: dict[str, Any]) -> httpx.Response:
    return client.put(f"/models/digits/aliases/{alias}", json=body)


def _history(client: httpx.Client, alias: str, **params: int) -> list[tuple[Any, ...]]:
    response = client.get(f"/models/digits/aliases/{alias}/history", params=params)
    assert response.status_code == 200, response.text
    history = AliasHistoryPublic.model_validate(response.json())
    assert history.count == len(history.data)
    return [(e.from_version, e.to_version, e.reason, e.job_id) for e in history.data]


def test_put_compare_and_set(client: httpx.Client) -> None:
    missing = _error(_put(client, "cas", {"version": 1, "if_version": 2}), 409, "alias_conflict")
    assert missing["details"] == {"current_version": None}
    created = _put(client, "cas", {"version": 1})
    assert created.status_code == 200, created.text
    assert AliasPublic.model_validate(created.json()) == AliasPublic(
        model_id="digits", alias="cas", version=1
    )
    assert _put(client, "cas", {"version": 2, "if_version": 1}).status_code == 200
    stale = _error(_put(client, "cas", {"version": 1, "if_version": 1}), 409, "alias_conflict")
    assert stale["details"] == {"current_version": 2}
    assert "version 2" in stale["message"]
    assert client.get("/models/digits").json()["aliases"]["cas"] == 2
    # Bad bodies are refused before anything moves.
    for body in ({"version": 1, "if_version": 0}, {"version": 1, "if_version": "one"}):
        assert _put(client, "cas", body).status_code == 422
    _error(_put(client, "cas", {"version": 9, "if_version": 2}), 404, "version_not_found")
    assert _history(client, "cas") == [(1, 2, "set", None), (None, 1, "set", None)]


def test_two_concurrent_compare_and_set_puts_one_wins(client: httpx.Client, api: str) -> None:
    assert _put(client, "race", {"version": 1}).status_code == 200
    barrier = threading.Barrier(2)
    answers: list[httpx.Response] = []

    def move(version: int) -> None:
        with httpx.Client(base_url=api, timeout=60, headers=AUTH) as own:
            barrier.wait()
            answers.append(_put(own, "race", {"version": version, "if_version": 1}))

    # Two pipelines promote version 2 over the version 1 they both saw.
    threads = [threading.Thread(target=move, args=(2,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
    lost = next(r for r in answers if r.status_code == 409)
    assert _error(lost, 409, "alias_conflict")["details"] == {"current_version": 2}
    assert _history(client, "race") == [(1, 2, "set", None), (None, 1, "set", None)]


def test_history_and_rollback(client: httpx.Client) -> None:
    assert _history(client, "never") == []
    _error(client.get("/models/nope/aliases/p/history"), 404, "model_not_found")
    nothing = _error(client.post("/models/digits/aliases/rb/rollback"), 409, "alias_conflict")
    assert nothing["details"] == {"current_version": None}
    assert "no previous version" in nothing["message"]
    for version in (1, 2, 2):  # the second PUT of 2 is recorded, but moves nothing
        assert _put(client, "rb", {"version": version}).status_code == 200
    rolled = client.post("/models/digits/aliases/rb/rollback")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json() == {"model_id": "digits", "alias": "rb", "version": 1}
    assert client.get("/models/digits").json()["aliases"]["rb"] == 1
    stale = client.post("/models/digits/aliases/rb/rollback", json={"if_version": 2})
    assert _error(stale, 409, "alias_conflict")["details"] == {"current_version": 1}
    again = client.post("/models/digits/aliases/rb/rollback", json={"if_version": 1})
    assert again.json()["version"] == 2
    assert client.delete("/models/digits/aliases/rb").status_code == 204
    history = _history(client, "rb")
    assert history == [
        (2, None, "delete", None),
        (1, 2, "rollback", None),
        (2, 1, "rollback", None),
        (2, 2, "set", None),
        (1, 2, "set", None),
        (None, 1, "set", None),
    ]
    assert _history(client, "rb", limit=2, offset=1) == history[1:3]
    assert client.get("/models/digits/aliases/rb/history", params={"limit": 0}).status_code == 422
    events = client.get("/models/digits/aliases/rb/history").json()["data"]
    assert set(events[0]) >= {"model_id", "alias", "from_version", "to_version", "at", "job_id"}
    assert events[0]["at"].endswith(("Z", "+00:00"))
    assert {event["actor"] for event in events} == {"admin"}


def test_moves_need_the_token_and_history_does_not(api: RunningApi) -> None:
    with httpx.Client(base_url=api, timeout=60) as anonymous:
        assert anonymous.get("/models/digits/aliases/rb/history").status_code == 200
        for response in (
            anonymous.put("/models/digits/aliases/rb", json={"version": 1}),
            anonymous.post("/models/digits/aliases/rb/rollback"),
            anonymous.delete("/models/digits/aliases/rb"),
        ):
            _error(response, 401, "unauthorized")


def test_prune_checks_promote_before_queueing(client: httpx.Client, api: RunningApi) -> None:
    base = {"model_id": "digits", "percentile": 50}
    promote = {"alias": "production", "max_drop_percent": 1}
    no_data = _error(client.post("/prune", json={**base, "promote": promote}), 422, "invalid_input")
    assert "dataset_id" in no_data["message"]
    dataset = api.env["DATASET_ID"]
    unknown = client.post(
        "/prune", json={**base, "dataset_id": dataset, "promote": {**promote, "metric": "auc"}}
    )
    assert "Received: 'auc'" in _error(unknown, 422, "invalid_input")["message"]
    bad_alias = client.post(
        "/prune", json={**base, "dataset_id": dataset, "promote": {**promote, "alias": "A B"}}
    )
    assert "promote.alias" in _error(bad_alias, 422, "invalid_input")["message"]
    jobs = client.get("/jobs", params={"model_id": "digits"}).json()
    assert jobs["count"] == 0
