"""`service.client.Client` against a real API (no worker, so jobs stay queued), and its retries
against a stub server that fails on purpose."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.api.schemas import AliasHistoryPublic, JobPublic, VersionPublic
from service.client import ApiError, Client, ServerUnavailable, WaitTimeout
from tests.support.api import RunningApi, find_free_port
from tests.support.digits import digits_npz


@pytest.fixture
def client(api: RunningApi) -> Iterator[Client]:
    with Client(api, retries=1, backoff=0.05) as client:
        yield client


def test_push_pull_and_resolve(client: Client, digits_model_path: Path, tmp_path: Path) -> None:
    first = client.push_model(digits_model_path, name="pushed")
    second = client.push_model(digits_model_path, name="pushed")
    assert isinstance(first, VersionPublic)
    assert (first.version, second.version) == (1, 2)
    assert first.spectral_units > 0 and first.inputs[0].shape == [None, 64]
    assert client.download("pushed", 1) == digits_model_path.read_bytes()
    client.set_alias("pushed", "production", 1)
    assert client.resolve("pushed") == 2
    assert client.resolve("pushed", alias="production") == 1
    assert client.pull("pushed", tmp_path / "p.keras", alias="production") == 1
    assert (tmp_path / "p.keras").read_bytes() == digits_model_path.read_bytes()
    assert not list(tmp_path.glob(".*.part"))
    with pytest.raises(ApiError) as missing:
        client.resolve("pushed", alias="staging")
    assert missing.value.status_code == 404 and "production" in missing.value.message
    with pytest.raises(ApiError) as unknown:
        client.model("never-pushed")
    assert (unknown.value.status_code, unknown.value.code) == (404, "model_not_found")
    assert unknown.value.exit_code == 2


def test_push_dataset_is_content_addressed(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(digits_npz(n=50))
    first, again = client.push_dataset(path), client.push_dataset(path)
    assert first.id == again.id and first.x_shape == [50, 64]
    assert client.dataset(first.id) == first


def test_compare_and_set_history_and_rollback(client: Client, digits_model_path: Path) -> None:
    for _ in range(3):
        client.push_model(digits_model_path, name="cas")
    client.set_alias("cas", "production", 1, if_version=None)
    with pytest.raises(ApiError) as conflict:
        client.set_alias("cas", "production", 3, if_version=2)
    assert conflict.value.status_code == 409 and conflict.value.code == "alias_conflict"
    assert conflict.value.details == {"current_version": 1}

    # Two pipelines race from version 1: exactly one moves the alias, the other gets 409.
    outcomes: list[object] = []

    def move(target: int) -> None:
        with Client(client.url, retries=0) as own:
            try:
                outcomes.append(own.set_alias("cas", "production", target, if_version=1).version)
            except ApiError as error:
                outcomes.append(error.code)

    threads = [threading.Thread(target=move, args=(v,)) for v in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if isinstance(o, int)]
    assert len(winners) == 1 and outcomes.count("alias_conflict") == 1, outcomes
    assert client.model("cas").aliases["production"] == winners[0]

    rolled = client.rollback("cas", "production")
    assert rolled.version == 1
    history = client.alias_history("cas", "production")
    assert isinstance(history, AliasHistoryPublic)
    assert [(e.reason, e.from_version, e.to_version) for e in history.data] == [
        ("rollback", winners[0], 1),
        ("set", 1, winners[0]),
        ("set", None, 1),
    ]
    assert client.alias_history("cas", "production", limit=1).data[0].reason == "rollback"


def test_jobs_submit_wait_cancel(client: Client, digits_model_path: Path) -> None:
    client.push_model(digits_model_path, name="jobs")
    accepted = client.submit(model_id="jobs", percentile=30, idempotency_key="client-test-1")
    assert accepted.status == "queued"
    again = client.submit(model_id="jobs", percentile=30, idempotency_key="client-test-1")
    assert again.job_id == accepted.job_id
    seen: list[JobPublic] = []
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as timeout:
        client.wait(accepted.job_id, progress=seen.append, timeout=0.6, poll_s=0.1)
    assert 0.5 < time.monotonic() - started < 5
    assert timeout.value.last_status == "queued" and timeout.value.exit_code == 3
    assert len(seen) >= 3 and all(job.id == accepted.job_id for job in seen)

    assert client.cancel(accepted.job_id).status == "cancelled"
    assert client.wait(accepted.job_id, timeout=5).status == "cancelled"
    listed = client.jobs(model_id="jobs", status="cancelled")
    assert [job.id for job in listed.data] == [accepted.job_id]


def test_submit_checks_the_request_before_sending(client: Client) -> None:
    with pytest.raises(ValidationError, match="dataset_id"):
        client.submit(model_id="jobs", method="metric")  # metric needs a dataset
    with pytest.raises(ValidationError, match="promote"):
        client.submit(model_id="jobs", percentile=10, promote={"alias": "p"})
    with pytest.raises(ApiError) as unknown:
        client.submit(model_id="no-such-model", percentile=10)
    assert unknown.value.status_code == 404


# -- retries, against a server that fails on purpose ---------------------------------------


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` requests, then 200 with an empty model list."""

    failures = 2
    seen: list[tuple[str, str, dict[str, str]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        type(self).seen.append((self.command, self.path, dict(self.headers)))
        failing = len(type(self).seen) <= type(self).failures
        body = b'{"error": {"code": "unavailable", "message": "try later"}}'
        if not failing:
            body = b'{"data": [], "count": 0}'
            if self.path == "/prune":
                body = b'{"job_id": "j1", "status": "queued"}'
        self.send_response(503 if failing else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[tuple[str, type[_Flaky]]]:
    handler = type("Flaky", (_Flaky,), {"seen": [], "failures": 2})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_reads_and_submissions_are_retried_on_503(
    flaky: tuple[str, type[_Flaky]], tmp_path: Path
) -> None:
    url, handler = flaky
    with Client(url, token="s3cret", retries=3, backoff=0.01) as client:
        assert client.models().count == 0
        assert len(handler.seen) == 3
        assert all(h.get("Authorization") == "Bearer s3cret" for _, _, h in handler.seen)

        handler.seen.clear()
        assert client.submit(model_id="m", percentile=10).job_id == "j1"
        keys = {h["Idempotency-Key"] for _, _, h in handler.seen}
        assert len(handler.seen) == 3 and len(keys) == 1  # one key across the retries

        # An upload is not safe to repeat after a 503: it may have been stored.
        handler.seen.clear()
        path = tmp_path / "d.npz"
        path.write_bytes(b"not really")
        with pytest.raises(ApiError) as refused:
            client.push_dataset(path)
        assert refused.value.status_code == 503 and refused.value.exit_code == 4
        assert len(handler.seen) == 1


def test_retries_are_bounded(flaky: tuple[str, type[_Flaky]]) -> None:
    url, handler = flaky
    handler.failures = 100
    with Client(url, retries=2, backoff=0.01) as client, pytest.raises(ApiError) as gave_up:
        client.models()
    assert gave_up.value.status_code == 503 and gave_up.value.message == "try later"
    assert len(handler.seen) == 3

    port = find_free_port()  # nothing listens there
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{port}", retries=2, backoff=0.1) as client:
        with pytest.raises(ServerUnavailable) as down:
            client.models()
    assert down.value.attempts == 3 and down.value.exit_code == 4
    assert 0.3 <= time.monotonic() - started < 5  # backed off 0.1 + 0.2 s


def test_two_pushes_of_a_new_name_make_versions_1_and_2(
    client: Client, digits_model_path: Path
) -> None:
    versions: list[int] = []

    def push() -> None:
        with Client(client.url, retries=0) as own:
            versions.append(own.push_model(digits_model_path, name="raced").version)

    threads = [threading.Thread(target=push) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == [1, 2]
