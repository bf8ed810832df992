"""What the UI lets a browser do, in-process: sessions, scoped and read-only tokens, protected
reads, cross-site posts, redirects and hostile try-it inputs. (The real-browser story and the
cookie flags live in test_ui_browser.py.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.api.app import create_app
from service.api.ui import session as ui_session
from service.jobs import state
from service.settings import Settings
from service.tokens import ADMIN, TokenTable, new_token_entry

ADMIN_TOKEN = "ui-admin-token-" + "y" * 20


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory, model_bytes: bytes
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """An app with an admin token and a token file (a reader of every model, a writer of
    ``team-*``), holding models ``team-a`` and ``other``; and the scoped tokens by name."""
    work = tmp_path_factory.mktemp("ui-guarded")
    reader, reader_entry = new_token_entry("reader", "read", ["*"])
    team, team_entry = new_token_entry("team", "write", ["team-*"])
    tokens_file = work / "tokens.toml"
    tokens_file.write_text(reader_entry + "\n" + team_entry)
    settings = Settings(data_dir=work, api_token=SecretStr(ADMIN_TOKEN), tokens_file=tokens_file)
    app = create_app(settings)
    for name in ("team-a", "other"):
        app.state.registry.create_model(name, model_bytes)
    with TestClient(app) as client:
        yield client, {"reader": reader, "team": team}


def log_in(client: TestClient, token: str) -> str:
    """Logs ``client`` in; returns the CSRF token its forms carry."""
    client.cookies.clear()
    answer = client.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    page = client.get("/ui/models/team-a").text
    match = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page)
    assert match, page
    return match.group(1)


def alerts(html: str) -> list[str]:
    return re.findall(r'role="alert">([^<]*)<', html)


def test_session_cookies_are_refused_when_forged_expired_or_their_token_is_gone(
    tmp_path: Path,
) -> None:
    _, entry = new_token_entry("ci", "write", ["*"])
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text(entry)
    settings = Settings(
        data_dir=tmp_path, api_token=SecretStr("first-admin-token"), tokens_file=tokens_file
    )
    tokens = TokenTable.load(tokens_file)
    key = ui_session.session_key(settings, tokens)
    assert key is not None
    cookie = ui_session.new_session_cookie(key, ADMIN, now=1_000)
    session = ui_session.read_session(key, settings, tokens, cookie, now=1_001)
    assert session is not None and session.principal == ADMIN
    assert re.fullmatch(r"[0-9a-f]{64}", session.csrf_token)

    # Expired.
    late = 1_000 + ui_session.SESSION_TTL_S
    assert ui_session.read_session(key, settings, tokens, cookie, now=late) is None
    # A payload edited to live longer no longer matches its signature.
    payload, signature = cookie.split(".")
    data = json.loads(ui_session.base64.urlsafe_b64decode(payload + "=="))
    data["exp"] += 10**6
    edited = ui_session.base64.urlsafe_b64encode(json.dumps(data).encode()).decode()
    assert ui_session.read_session(key, settings, tokens, f"{edited}.{signature}") is None
    for junk in ("", "no-dot", "a.b.c", "!!!.00", cookie + "0"):
        assert ui_session.read_session(key, settings, tokens, junk, now=1_001) is None
    # A new admin token ends the sessions signed under the old one.
    rotated = Settings(
        data_dir=tmp_path, api_token=SecretStr("second-admin-token"), tokens_file=tokens_file
    )
    new_key = ui_session.session_key(rotated, tokens)
    assert ui_session.read_session(new_key, rotated, tokens, cookie, now=1_001) is None
    # A scoped session ends when its entry leaves the token file.
    scoped = TokenTable.load(tokens_file).entries[0]
    cookie = ui_session.new_session_cookie(
        key, ui_session.Principal("scoped", token=scoped), now=1_000
    )
    assert ui_session.read_session(key, settings, tokens, cookie, now=1_001) is not None
    assert ui_session.read_session(key, settings, TokenTable([]), cookie, now=1_001) is None
    # Without any token configured there are no sessions at all.
    open_settings = Settings(data_dir=tmp_path)
    assert ui_session.session_key(open_settings, TokenTable([])) is None


def test_a_scoped_token_sees_and_moves_only_its_models(
    guarded: tuple[TestClient, dict[str, str]],
) -> None:
    client, tokens = guarded
    csrf = log_in(client, tokens["team"])
    listing = client.get("/ui").text
    assert "team-a" in listing and "other" not in listing
    hidden = client.get("/ui/models/other")
    assert hidden.status_code == 404 and "No model named &#39;other&#39;" in hidden.text
    assert client.get("/ui/models/other/versions/1/artifact").status_code == 404
    move = {"alias": "production", "version": "1", "seen": "{}", "csrf_token": csrf}
    refused = client.post("/ui/models/other/aliases", data=move, follow_redirects=False)
    assert refused.status_code == 404
    assert client.app.state.registry.get_model("other").aliases == {}  # type: ignore[attr-defined]
    moved = client.post("/ui/models/team-a/aliases", data=move, follow_redirects=False)
    assert moved.status_code == 303
    assert client.app.state.registry.get_model("team-a").aliases == {"production": 1}  # type: ignore[attr-defined]
    # The prune form offers only its models and refuses another next to the field.
    form = client.get("/ui/prune").text
    assert 'value="team-a"' in form and 'value="other"' not in form
    prune = client.post(
        "/ui/prune",
        data={"model_id": "other", "method": "percentile", "percentile": "50", "csrf_token": csrf},
    )
    assert prune.status_code == 404
    assert alerts(prune.text) == ["No model named &#39;other&#39;"]


def test_a_read_only_token_reads_but_every_write_is_refused(
    guarded: tuple[TestClient, dict[str, str]],
) -> None:
    client, tokens = guarded
    csrf = log_in(client, tokens["reader"])
    page = client.get("/ui/models/other").text
    assert "this session's token cannot make changes" in page
    assert 'name="alias"' not in page  # no move forms to fill in
    move = {"alias": "staging", "version": "1", "seen": "{}", "csrf_token": csrf}
    refused = client.post("/ui/models/other/aliases", data=move)
    assert refused.status_code == 403 and "read-only" in refused.text
    assert "staging" not in client.app.state.registry.get_model("other").aliases  # type: ignore[attr-defined]
    # Logging out is no write: a read-only session may end, with its CSRF token only.
    assert client.post("/ui/logout").status_code == 403
    out = client.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and 'spectral_ui_session=""' in out.headers["set-cookie"]


def test_logins_with_a_wrong_token_and_redirects_off_site_are_refused(
    guarded: tuple[TestClient, dict[str, str]],
) -> None:
    client, _ = guarded
    client.cookies.clear()
    wrong = client.post("/ui/login", data={"token": ADMIN_TOKEN + "x"})
    assert wrong.status_code == 401 and "spectral_ui_session" not in wrong.headers.get(
        "set-cookie", ""
    )
    for target in ("https://evil.example/", "//evil.example/ui", "/ui\\@evil.example"):
        answer = client.post(
            "/ui/login", data={"token": ADMIN_TOKEN, "next": target}, follow_redirects=False
        )
        assert answer.headers["location"] == "/ui", target
    answer = client.post(
        "/ui/login", data={"token": ADMIN_TOKEN, "next": "/ui/jobs"}, follow_redirects=False
    )
    assert answer.headers["location"] == "/ui/jobs"


def test_protected_reads_need_a_login_and_answer_html(tmp_path: Path, model_bytes: bytes) -> None:
    app = create_app(
        Settings(data_dir=tmp_path, api_token=SecretStr(ADMIN_TOKEN), protect_reads=True)
    )
    app.state.registry.create_model("digits", model_bytes)
    with TestClient(app) as client:
        for path in ("/ui", "/ui/models/digits", "/ui/jobs", "/ui/models/digits/versions/1"):
            page = client.get(path)
            assert page.status_code == 401, path
            assert page.headers["content-type"].startswith("text/html")
            assert "digits v1" not in page.text and "/ui/login" in page.text
        assert client.get("/ui/jobs/progress?id=x").status_code == 401
        client.post("/ui/login", data={"token": ADMIN_TOKEN})
        assert "digits" in client.get("/ui").text


def test_without_a_token_anyone_writes_but_not_from_another_site(
    tmp_path: Path, model_bytes: bytes
) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    app.state.registry.create_model("digits", model_bytes)
    move = {"alias": "production", "version": "1", "seen": "{}"}
    with TestClient(app) as client:
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}):
            refused = client.post("/ui/models/digits/aliases", data=move, headers=headers)
            assert refused.status_code == 403, headers
        assert app.state.registry.get_model("digits").aliases == {}
        same_site = {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}
        moved = client.post(
            "/ui/models/digits/aliases", data=move, headers=same_site, follow_redirects=False
        )
        assert moved.status_code == 303
        assert app.state.registry.get_model("digits").aliases == {"production": 1}
        # Compare-and-set: the page said production was on v1; it is not any more.
        app.state.registry.set_alias("digits", "production", 1)
        stale = client.post(
            "/ui/models/digits/aliases",
            data={**move, "seen": json.dumps({"production": 7})},
        )
        assert stale.status_code == 409
        assert alerts(stale.text) == [
            "&#39;production&#39; points at v1 now, not where this page showed it: "
            "check the page again and retry"
        ]

        # History and rollback: the page lists the moves; a rollback names the version it saw.
        app.state.registry.add_version("digits", model_bytes)
        client.post("/ui/models/digits/aliases", data={**move, "version": "2"})
        rows = re.findall(
            r"<tr><td>[^<]+</td><td>([^<]+)</td><td>([^<]+)</td><td>(\w+)</td>",
            client.get("/ui/models/digits").text,
        )
        assert rows == [("v1", "v2", "set"), ("v1", "v1", "set"), ("-", "v1", "set")]
        back = client.post(
            "/ui/models/digits/aliases/production/rollback",
            data={"if_version": "2"},
            follow_redirects=False,
        )
        assert back.status_code == 303
        assert app.state.registry.get_model("digits").aliases == {"production": 1}
        again = client.post(
            "/ui/models/digits/aliases/production/rollback", data={"if_version": "2"}
        )
        assert again.status_code == 409
        assert "points at v1 now" in alerts(again.text)[0]
        assert app.state.registry.get_model("digits").aliases == {"production": 1}


def test_uploads_refuse_what_the_json_api_refuses_with_the_same_words(
    tmp_path: Path, model_bytes: bytes
) -> None:
    """The upload forms read files as the JSON routes do: a legacy .h5 model is told how to
    re-save it, a dataset that is not an .npz is refused, and neither leaves a model behind."""
    app = create_app(Settings(data_dir=tmp_path))
    with TestClient(app) as client:
        for filename in ("model.h5", "weights.HDF5"):
            refused = client.post(
                "/ui/upload",
                data={"name": "legacy", "kind": "new"},
                files={"file": (filename, model_bytes)},
            )
            assert refused.status_code == 415, refused.text
            assert alerts(refused.text) == [
                f"Expected a .keras file, got &#39;{filename}&#39;; legacy HDF5 (.h5) models "
                "are not accepted; re-save with model.save(&#39;model.keras&#39;)"
            ]
        assert app.state.registry.list_models() == []
        dataset = client.post("/ui/datasets", files={"file": ("d.npz", b"not a zip")})
        assert dataset.status_code == 422, dataset.text
        assert "must be an .npz archive" in alerts(dataset.text)[0]
        stored = client.post(
            "/ui/upload",
            data={"name": "fine", "kind": "new"},
            files={"file": ("fine.keras", model_bytes)},
            follow_redirects=False,
        )
        assert stored.status_code == 303, stored.text
        assert [m.id for m in app.state.registry.list_models()] == ["fine"]


def test_try_it_shows_hostile_inputs_as_text_and_refusals_as_field_errors(
    guarded: tuple[TestClient, dict[str, str]],
) -> None:
    client, _ = guarded
    base = "/ui/models/team-a/versions/1"
    script = "</textarea><script>alert(1)</script>"
    page = client.get(base, params={"inputs": script})
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text and "&lt;script&gt;alert(1)" in page.text
    assert alerts(page.text) and "not valid JSON" in alerts(page.text)[0]
    deep = client.get(base, params={"inputs": "[" * 5000 + "]" * 5000})
    assert deep.status_code == 200 and "nested" in alerts(deep.text)[0]
    wrong = client.get(base, params={"inputs": "[[1, 2]]"})
    assert "expected shape" in alerts(wrong.text)[0]
    assert client.get(base, params={"inputs": "[" + ",".join(["0"] * 64) + "]"}).status_code == 200


def test_jobs_page_filters_cancels_and_shows_failures(tmp_path: Path, model_bytes: bytes) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    app.state.registry.create_model("digits", model_bytes)
    # No worker runs here: submitted jobs stay queued until this test moves them.
    sent: list[str] = []
    app.state.broker = SimpleNamespace(enqueue=lambda job_id, queue: sent.append(job_id))
    prune = {"model_id": "digits", "method": "percentile", "percentile": "50"}
    with TestClient(app) as client:
        first = client.post("/ui/prune", data=prune, follow_redirects=False)
        assert first.status_code == 303
        cancel_id = first.headers["location"].rsplit("/", 1)[-1]
        page = client.get(first.headers["location"]).text
        assert "queued" in page and "Cancel job" in page
        second = client.post("/ui/prune", data={**prune, "percentile": "30"})
        fail_id = second.url.path.rsplit("/", 1)[-1]
        assert sent == [cancel_id, fail_id]
        with app.state.registry.database.session() as session:
            state.mark_failed(session, fail_id, "Out of <b>memory</b> at step 2")

        cancelled = client.post(f"/ui/jobs/{cancel_id}/cancel", follow_redirects=False)
        assert cancelled.status_code == 303
        page = client.get(f"/ui/jobs/{cancel_id}").text
        assert "cancelled" in page and "Cancel job" not in page
        again = client.post(f"/ui/jobs/{fail_id}/cancel")
        assert again.status_code == 409 and "already failed" in again.text

        failed = client.get("/ui/jobs", params={"status": "failed"}).text
        assert fail_id in failed and cancel_id not in failed
        assert "Out of &lt;b&gt;memory&lt;/b&gt; at step 2" in failed
        assert client.get("/ui/jobs", params={"model_id": "nothing"}).text.count("No jobs match")
        # The promotion gate's refusals show next to its own fields.
        gate = {**prune, "promote_alias": "production", "promote_max_drop": "500"}
        too_much = client.post("/ui/prune", data=gate)
        assert too_much.status_code == 422
        assert re.search(r'id="promote_max_drop-error" role="alert">[^<]*100', too_much.text)
        no_dataset = client.post("/ui/prune", data={**gate, "promote_max_drop": "1"})
        assert no_dataset.status_code == 422
        assert re.search(
            r'id="promote_alias-error" role="alert">promote needs dataset_id', no_dataset.text
        )
        assert sent == [cancel_id, fail_id]  # neither was submitted

        progress = client.get("/ui/jobs/progress", params={"id": [fail_id, cancel_id, "nope"]})
        by_id = {job["id"]: job for job in progress.json()["data"]}
        assert set(by_id) == {fail_id, cancel_id}
        assert by_id[fail_id]["error"] == "Out of <b>memory</b> at step 2"
        assert by_id[cancel_id]["status"] == "cancelled"
