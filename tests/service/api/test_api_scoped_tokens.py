"""Against one real server with an admin token, a token file, protected reads and rate limits:
auth before the body is read, JSON limits, token scopes (404 outside them), filtered lists,
read-only tokens, metrics, 429 with Retry-After, and the OpenAPI of that deployment."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.tokens import new_token_entry
from tests.support.api import RunningApi, launch_api, stop_api
from tests.support.uploads import upload

ADMIN = "admin-token-for-tests"
WRITES_PER_MIN = 12
PREDICTS_PER_S = 3
TOKENS: dict[str, str] = {}
MEGABYTE = 1024 * 1024


def _token(name: str, access: str, models: list[str]) -> str:
    token, entry = new_token_entry(name, access, models)  # type: ignore[arg-type]
    TOKENS[name] = entry
    return token


TEAM_A_WRITER = _token("team-a-writer", "write", ["team-a-*"])
TEAM_A_READER = _token("team-a-reader", "read", ["team-a-*", "shared"])
PREDICTOR = _token("predictor", "read", ["team-a-*"])
FLOODER = _token("flooder", "write", ["flood-*"])
# One per hostile-body case (three requests each, within the predict burst), so that no case
# spends another's rate-limit bucket.
HOSTILE = [_token(f"hostile-{i}", "write", ["team-a-*"]) for i in range(4)]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, model_bytes: bytes) -> Iterator[RunningApi]:
    work = tmp_path_factory.mktemp("scoped")
    tokens_file = work / "tokens.toml"
    tokens_file.write_text("\n".join(TOKENS.values()))
    server = launch_api(
        {
            "SPECTRAL_API_TOKEN": ADMIN,
            "SPECTRAL_TOKENS_FILE": str(tokens_file),
            "SPECTRAL_PROTECT_READS": "true",
            "SPECTRAL_RATE_LIMIT_WRITES_PER_MIN": str(WRITES_PER_MIN),
            "SPECTRAL_RATE_LIMIT_PREDICTS_PER_S": str(PREDICTS_PER_S),
        },
        work,
    )
    with _client(server, ADMIN) as admin:
        for name in ("team-a-model", "team-b-secret"):
            assert upload(admin, name, model_bytes).status_code == 201
    yield server
    stop_api(server)


def _client(api: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=api, timeout=60, headers=headers)


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return dict(body["error"])


def _raw_request(api: str, head: str, body_prefix: bytes, wait_s: float) -> tuple[bytes, float]:
    """Sends ``head`` and the first bytes of a body that is never finished; returns what the
    server answered within ``wait_s`` and how long it took."""
    address = urlsplit(api)
    with socket.create_connection((address.hostname, address.port), timeout=wait_s) as sock:
        start = time.monotonic()
        sock.sendall(head.encode() + body_prefix)
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
        return received, time.monotonic() - start


def _multipart_head(declared: int, token: str | None) -> str:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        "POST /models HTTP/1.1\r\nHost: test\r\n"
        f"{auth}Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )


def test_writes_are_refused_before_the_body_is_received(api: RunningApi) -> None:
    """A 100 MB upload (and a 10 MB JSON body) without a valid token is answered 401 after the
    headers and 64 KiB: the server did not wait for the other 99.9 MB."""
    prefix = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="m.keras"\r\n\r\n'
    prefix += b"\0" * (64 * 1024)
    for token, status in ((None, b"401"), ("wrong-token", b"401"), (TEAM_A_READER, b"403")):
        answer, elapsed = _raw_request(api, _multipart_head(100 * MEGABYTE, token), prefix, 10)
        assert status in answer.split(b"\r\n", 1)[0], answer[:200]
        assert elapsed < 5, elapsed
    json_head = (
        "POST /prune HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {10 * MEGABYTE}\r\n\r\n"
    )
    answer, _ = _raw_request(api, json_head, b'{"model_id": "team-a-model", ', 10)
    assert b" 401 " in answer.split(b"\r\n", 1)[0], answer[:200]
    # Control: with the admin token the server does wait for the body it was promised.
    answer, elapsed = _raw_request(api, _multipart_head(100 * MEGABYTE, ADMIN), prefix, 2)
    assert answer == b"" and elapsed >= 1.9


@pytest.mark.parametrize(
    ("case", "method", "path"),
    [
        (0, "POST", "/prune"),
        (1, "PUT", "/models/team-a-model/aliases/production"),
        (2, "POST", "/models/team-a-model/predict"),
        (3, "POST", "/models/team-a-model/versions/1/predict"),
    ],
)
def test_hostile_json_bodies_are_400_not_500(
    api: RunningApi, case: int, method: str, path: str
) -> None:
    hostile = {
        "deep": b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        "long number": b'{"inputs": [[' + b"7" * 5000 + b']], "version": 1}',
        "past 64 bits": b'{"model_id": "team-a-model", "version": 18446744073709551616}',
    }
    with _client(api, HOSTILE[case]) as writer, _client(api, None) as anonymous:
        for what, body in hostile.items():
            headers = {"Content-Type": "application/json"}
            response = writer.request(method, path, content=body, headers=headers)
            assert response.status_code == 400, (what, response.text)
            assert _error(response)["code"] == "invalid_json", what
            # Auth comes first: an anonymous client never gets its body looked at.
            refused = anonymous.request(method, path, content=body, headers=headers)
            assert refused.status_code == 401, (what, refused.text)


def test_a_token_never_learns_that_other_models_exist(api: RunningApi) -> None:
    with _client(api, ADMIN) as admin, _client(api, TEAM_A_WRITER) as team_a:
        missing = admin.get("/models/no-such-model")
        assert _error(missing) == {
            "code": "model_not_found",
            "message": "No model named 'no-such-model'",
            "details": None,
        }
        for path in (
            "/models/{}",
            "/models/{}/versions",
            "/models/{}/versions/1",
            "/models/{}/versions/1/artifact",
            "/models/{}/predict?inputs=" + str([[0.0] * 64]).replace(" ", ""),
        ):
            assert admin.get(path.format("team-b-secret")).status_code == 200, path
            hidden = team_a.get(path.format("team-b-secret"))
            unknown = team_a.get(path.format("no-such-model"))
            assert hidden.status_code == unknown.status_code == 404, path
            assert _error(hidden)["message"] == _error(unknown)["message"].replace(
                "no-such-model", "team-b-secret"
            )
            assert hidden.headers.keys() == unknown.headers.keys()
        assert (
            team_a.post("/models/team-b-secret/predict", json={"inputs": [[0.0] * 64]}).status_code
            == 404
        )
        moved = team_a.put("/models/team-b-secret/aliases/production", json={"version": 1})
        assert moved.status_code == 404 and _error(moved)["code"] == "model_not_found"
        prune = {"model_id": "team-b-secret", "percentile": 50}
        hidden_job = team_a.post("/prune", json=prune)
        assert hidden_job.status_code == 404, hidden_job.text
        assert _error(hidden_job)["message"] == "No model named 'team-b-secret'"

        listed = team_a.get("/models").json()
        assert [m["id"] for m in listed["data"]] == ["team-a-model"] and listed["count"] == 1
        assert {m["id"] for m in admin.get("/models").json()["data"]} >= {
            "team-a-model",
            "team-b-secret",
        }

        # Creating a model outside the scope: 403 whether or not the name is taken.
        for name in ("team-b-secret", "team-b-new"):
            created = upload(team_a, name, b"never read")
            assert created.status_code == 403, created.text
            assert _error(created)["code"] == "forbidden"
        assert admin.get("/models/team-b-new").status_code == 404
        assert (
            team_a.put("/models/team-a-model/aliases/production", json={"version": 1}).status_code
            == 200
        )


def test_jobs_are_filtered_to_the_tokens_models(api: RunningApi) -> None:
    with _client(api, ADMIN) as admin, _client(api, TEAM_A_WRITER) as team_a:
        b_job = admin.post("/prune", json={"model_id": "team-b-secret", "percentile": 50})
        assert b_job.status_code == 202, b_job.text
        a_job = team_a.post("/prune", json={"model_id": "team-a-model", "percentile": 50})
        assert a_job.status_code == 202, a_job.text
        b_id, a_id = b_job.json()["job_id"], a_job.json()["job_id"]

        assert {j["id"] for j in admin.get("/jobs").json()["data"]} >= {a_id, b_id}
        seen = team_a.get("/jobs").json()["data"]
        assert {j["model_id"] for j in seen} == {"team-a-model"} and a_id in {j["id"] for j in seen}
        assert team_a.get("/jobs", params={"model_id": "team-b-secret"}).json()["count"] == 0
        assert team_a.get("/jobs", params={"limit": 1, "offset": 0}).json()["count"] == 1
        assert team_a.get("/jobs", params={"offset": 1}).json()["count"] == len(seen) - 1

        hidden = team_a.get(f"/jobs/{b_id}")
        unknown = team_a.get("/jobs/job-that-never-was")
        assert hidden.status_code == unknown.status_code == 404
        assert _error(hidden)["message"] == f"No job with id {b_id!r}"
        assert team_a.post(f"/jobs/{b_id}/cancel").status_code == 404
        assert admin.get(f"/jobs/{b_id}").json()["cancel_requested"] is False
        assert team_a.get(f"/jobs/{a_id}").status_code == 200


def test_read_only_tokens_and_metrics(api: RunningApi) -> None:
    with (
        _client(api, TEAM_A_READER) as reader,
        _client(api, None) as anonymous,
        _client(api, ADMIN) as admin,
    ):
        assert reader.get("/models/team-a-model").status_code == 200
        refused = reader.put("/models/team-a-model/aliases/production", json={"version": 1})
        assert refused.status_code == 403 and _error(refused)["code"] == "forbidden"
        # Out of scope stays 404 even for a write the token could never make.
        assert (
            reader.put("/models/team-b-secret/aliases/production", json={"version": 1}).status_code
            == 404
        )
        assert anonymous.get("/models").status_code == 401
        assert anonymous.get("/models").headers["www-authenticate"] == "Bearer"
        assert reader.get("/metrics").status_code == 403, "metrics name every model"
        assert anonymous.get("/metrics").status_code == 401
        metrics = admin.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith(
            "text/plain"
        )


def test_rate_limits_answer_429_with_retry_after(api: RunningApi) -> None:
    with _client(api, FLOODER) as flooder, _client(api, PREDICTOR) as predictor:
        statuses = [flooder.post("/jobs/no-such-job/cancel").status_code for _ in range(15)]
        assert statuses[:WRITES_PER_MIN] == [404] * WRITES_PER_MIN, statuses
        assert statuses[WRITES_PER_MIN:] == [429] * (15 - WRITES_PER_MIN), statuses
        limited = flooder.post("/jobs/no-such-job/cancel")
        assert _error(limited)["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60 // WRITES_PER_MIN
        # Reads are not writes: the same token still reads.
        assert flooder.get("/jobs").status_code == 200

        inputs = {"inputs": [[0.0] * 64]}
        answers = [predictor.post("/models/team-a-model/predict", json=inputs) for _ in range(8)]
        statuses = [a.status_code for a in answers]
        assert statuses[:PREDICTS_PER_S] == [200] * PREDICTS_PER_S and 429 in statuses, statuses
        assert {a.headers["retry-after"] for a in answers if a.status_code == 429} == {"1"}
        time.sleep(1.1)
        assert predictor.post("/models/team-a-model/predict", json=inputs).status_code == 200


def test_openapi_documents_this_deployments_errors(api: RunningApi) -> None:
    with _client(api, None) as anonymous:
        schema = anonymous.get("/openapi.json").json()
    paths = schema["paths"]
    upload_op = paths["/models"]["post"]["responses"]
    assert {"400", "401", "403", "409", "413", "415", "422", "429"} <= set(upload_op)
    for status in ("401", "404", "422", "429"):
        documented = paths["/models/{model_id}/predict"]["post"]["responses"][status]
        ref = documented["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorBody", status
    assert "Retry-After" in paths["/prune"]["post"]["responses"]["429"]["headers"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert paths["/metrics"]["get"]["responses"]["200"]["content"] == {
        "text/plain": {"schema": {"type": "string"}}
    }
    # Reads need a token on this server: no anonymous alternative in the security list.
    assert {} not in paths["/models"]["get"]["security"]
    # The alias routes (another module, another router) get the same treatment.
    alias_op = paths["/models/{model_id}/aliases/{alias}"]["put"]["responses"]
    assert {"401", "403", "404", "409", "429"} <= set(alias_op)
