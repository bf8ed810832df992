"""The web UI in a real headless Chromium (Debian's, driven by Playwright) against a real server.

Both tests share one ``spectral serve`` (the API and its embedded worker on the SQLite broker)
with an API token set. The story test logs in and walks what a user would do: upload a model
and a dataset, prune by metric and watch the job, read the new version's plots, move
``production`` to it and try a prediction. The token test checks what a browser without a
login, with a forged session, without the CSRF token or from another site is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.api import REPO_ROOT, child_env, find_free_port
from tests.support.digits import digits, digits_npz

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/ensure-services)"
)
WIDTHS = {"wide": (1280, 900), "narrow": (390, 844)}
JOB_TIMEOUT_MS = 120_000
TOKEN = "ui-test-token-" + "x" * 20


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def browser_page(browser: Any) -> Iterator[Any]:
    """A page in a fresh context: no cookies, 1280 px wide."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``spectral serve`` on a free port: the API with one embedded worker on the embedded
    defaults (SQLite registry and broker), with an API token so the UI needs a login to write."""
    work_dir = tmp_path_factory.mktemp("serve")
    port = find_free_port()
    log_path = work_dir / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"]
            + ["--data-dir", str(work_dir / "data"), "--port", str(port)],
            cwd=REPO_ROOT,
            env=child_env(
                {"SPECTRAL_BROKER_POLLING_INTERVAL_S": "0.05", "SPECTRAL_API_TOKEN": TOKEN}
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        yield base
    except BaseException:
        sys.stdout.write(f"\n----- serve log -----\n{log_path.read_text()[-6000:]}\n")
        raise
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def log_in(page: Any) -> None:
    page.get_by_role("link", name="Log in").first.click()
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    playwright_sync.expect(page.get_by_role("button", name="Log out")).to_be_visible()


def shoot(page: Any, directory: Path, name: str) -> None:
    """Full-page screenshots at both widths; at 390 px nothing may overflow sideways."""
    for label, (width, height) in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(directory / f"{name}-{width}.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= width, f"{name} is {overflow}px wide at {label} ({width}px)"
    page.set_viewport_size({"width": 1280, "height": 900})


def alert_texts(page: Any) -> list[str]:
    return [text.strip() for text in page.locator("[role=alert]").all_inner_texts()]


def test_story_upload_prune_watch_plots_promote_try(
    serve: str, browser_page: Any, tmp_path: Path, digits_model_path: Path
) -> None:
    page, shots = browser_page, tmp_path / "screenshots"
    shots.mkdir()
    expect = playwright_sync.expect

    page.goto(serve + "/")
    assert page.url == f"{serve}/ui"
    expect(page.get_by_role("heading", level=1)).to_have_text("Models")
    page.keyboard.press("Tab")  # the first stop skips the navigation
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    log_in(page)

    # 1. Upload the trained digits model (the upload answers with its version page).
    page.get_by_role("link", name="Upload model").click()
    page.get_by_label("Model name").fill("digits")
    page.get_by_label(".keras file").set_input_files(str(digits_model_path))
    shoot(page, shots, "upload")
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("digits v1")
    # The same name again: the service's message shows next to the name field.
    page.goto(serve + "/ui/upload")
    page.get_by_label("Model name").fill("digits")
    page.get_by_label(".keras file").set_input_files(str(digits_model_path))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#name-error")).to_contain_text("digits")
    assert page.locator("#name").get_attribute("aria-invalid") == "true"

    # 2. Upload a dataset.
    npz = tmp_path / "digits.npz"
    npz.write_bytes(digits_npz(n=400))
    page.get_by_role("link", name="Upload dataset").click()
    page.get_by_label(".npz file").set_input_files(str(npz))
    page.get_by_role("button", name="Upload").click()
    dataset_id = page.locator("#dataset-id").inner_text()
    assert re.fullmatch(r"ds_[0-9a-f]{24}", dataset_id)
    expect(page.get_by_role("status")).to_contain_text("x [400, 64]")
    shoot(page, shots, "dataset")

    # 3. Submit a metric job; a missing budget-method dataset is refused next to its field.
    page.get_by_role("link", name="Prune with this dataset").click()
    assert page.get_by_label("Dataset id").input_value() == dataset_id
    page.get_by_label("Model", exact=True).select_option("digits")
    page.get_by_label("Method").select_option("metric")
    page.get_by_label("Dataset id").fill("")
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#dataset_id-error")).to_contain_text("needs a dataset_id")
    page.get_by_label("Dataset id").fill(dataset_id)
    page.get_by_label("Metric budget").fill("5")
    shoot(page, shots, "prune")
    page.get_by_role("button", name="Submit job").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("metric job on digits v1")
    job_id = page.url.rsplit("/", 1)[-1]

    # ... and watch it: the page polls, so progress and step change without a reload.
    status = page.locator(".job-status")
    steps_seen: set[str] = set()
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while status.inner_text() != "succeeded" and time.monotonic() < deadline:
        assert status.inner_text() in ("queued", "running"), alert_texts(page)
        step = page.locator(".job-step").inner_text()
        if status.inner_text() == "running" and step not in steps_seen:
            page.screenshot(path=str(shots / f"job-running-{len(steps_seen)}.png"))
        steps_seen.add(step)
        page.wait_for_timeout(250)
    assert status.inner_text() == "succeeded", alert_texts(page)
    expect(page.locator(".job-percent")).to_have_text("100%")
    assert len(steps_seen - {""}) >= 2, steps_seen  # it was seen moving, not only finished
    shoot(page, shots, "job")
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.locator(f'[data-job-id="{job_id}"] .job-status')).to_have_text("succeeded")
    shoot(page, shots, "jobs")
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No jobs match.")).to_be_visible()

    # 4. The new version: both plots drawn, with their numbers as tables.
    page.goto(f"{serve}/ui/jobs/{job_id}")
    page.get_by_role("link", name="New version v2").click()
    for plot in ("#eigen-plot", "#metric-plot"):
        page.wait_for_function(
            f"() => document.querySelector('{plot}').complete && "
            f"document.querySelector('{plot}').naturalWidth > 0"
        )
    report = httpx.get(f"{serve}/models/digits/versions/2/report").json()
    chosen = page.locator("tr.chosen td").first.inner_text()
    assert float(chosen) == report["percentile"]
    expect(page.get_by_role("table", name="|eigenvalue| per layer and the cutoff")).to_be_visible()
    compare = page.locator("table.compare")
    expect(compare).to_contain_text("Parent v1")
    expect(compare).to_contain_text(f"{report['params_after']:,}")
    expect(compare).to_contain_text(f"{report['params_before']:,}")
    shoot(page, shots, "version")

    # The lineage tree: v2 under v1 with its method, % removed and metric before/after.
    page.get_by_role("link", name="digits", exact=True).first.click()
    child = page.locator("li:has(> article#v1) > ul.tree article#v2")
    expect(child).to_be_visible()
    removed = f"{100 * report['nodes_removed_fraction']:.1f}%"
    expect(child).to_contain_text(removed)
    expect(child).to_contain_text(f"metric (percentile {report['percentile']:g}, budget 5%")
    expect(child).to_contain_text(
        f"accuracy {report['metric_before']:.4f} → {report['metric_after']:.4f}"
    )
    expect(child).to_contain_text(f"{report['params_after']:,}")

    # 5. Move production to v2 (compare-and-set against what the page showed).
    # From the keyboard: the alias field, then Tab to its button and Enter.
    child.get_by_label("Alias").fill("production")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Move to v2"
    page.keyboard.press("Enter")
    expect(page.locator("article#v2 .badge.alias")).to_have_text("production")
    assert httpx.get(f"{serve}/models/digits").json()["aliases"] == {"production": 2}
    shoot(page, shots, "model")
    page.goto(serve + "/ui")
    expect(page.locator("table.models")).to_contain_text("production → v2")
    expect(page.locator("table.models")).to_contain_text("succeeded")
    shoot(page, shots, "models")

    # 6. Try it: one digit through v2; the page shows what the predict API answers.
    page.goto(f"{serve}/ui/models/digits/versions/2")
    x, _ = digits()
    row = [float(v) for v in np.round(x[7], 4)]
    page.get_by_label("Inputs").fill(json.dumps([row]))
    page.get_by_role("button", name="Predict with v2").click()
    predicted = httpx.post(
        f"{serve}/models/digits/versions/2/predict", json={"inputs": [row]}, timeout=30
    )
    answer = predicted.json()["outputs"][0]
    best = int(np.argmax(answer))
    expect(page.locator(".prediction")).to_have_text(
        f"row 0: class {best} (score {answer[best]:.4f})"
    )
    page.get_by_label("Inputs").fill("[[1, 2]]")
    page.get_by_role("button", name="Predict with v2").click()
    expect(page.locator("#inputs-error")).to_contain_text("expected shape")


def test_token_login_cookie_and_csrf(
    serve: str, browser_page: Any, digits_model_path: Path
) -> None:
    api, page = serve, browser_page
    expect = playwright_sync.expect
    model = ("guarded.keras", digits_model_path.read_bytes())

    # Without a login: reads work, the write forms are disabled and a direct post is refused.
    page.goto(api + "/ui/upload")
    expect(page.get_by_role("note")).to_contain_text("Read-only")
    expect(page.get_by_role("button", name="Upload")).to_be_disabled()
    refused = httpx.post(
        f"{api}/ui/upload", data={"name": "guarded"}, files={"file": model}, timeout=30
    )
    assert refused.status_code == 401
    forged = httpx.post(
        f"{api}/ui/upload",
        data={"name": "guarded"},
        files={"file": model},
        cookies={"spectral_ui_session": "eyJleHAiOjk5OTk5OTk5OTl9.00"},
        timeout=30,
    )
    assert forged.status_code == 401
    assert httpx.get(f"{api}/models/guarded").status_code == 404

    # A wrong token is refused next to the field; the right one sets a session cookie.
    page.get_by_role("link", name="Log in").first.click()
    page.get_by_label("API token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#token-error")).to_have_text("That is not the API token")
    assert page.context.cookies() == []
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    assert page.url == f"{api}/ui/upload"
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "spectral_ui_session"
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]
    assert page.evaluate("document.cookie") == ""

    # The session's cookie alone does not make a write: the CSRF token must come with it.
    created = httpx.post(
        f"{api}/models",
        data={"name": "guarded"},
        files={"file": model},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    alias = {"alias": "production", "version": "1", "seen": "{}"}
    no_csrf = page.request.post(f"{api}/ui/models/guarded/aliases", form=alias)
    assert no_csrf.status == 403
    wrong_csrf = page.request.post(
        f"{api}/ui/models/guarded/aliases", form={**alias, "csrf_token": "0" * 64}
    )
    assert wrong_csrf.status == 403
    page.goto(api + "/ui/models/guarded")
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    cross_site = page.request.post(
        f"{api}/ui/models/guarded/aliases",
        form={**alias, "csrf_token": csrf},
        headers={"Origin": "http://attacker.example"},
    )
    assert cross_site.status == 403
    assert httpx.get(f"{api}/models/guarded").json()["aliases"] == {}
    page.get_by_label("Alias").fill("production")
    page.get_by_role("button", name="Move to v1").click()
    expect(page.locator("article#v1 .badge.alias")).to_have_text("production")

    # Logging out ends the session: the forms are disabled again.
    page.get_by_role("button", name="Log out").click()
    page.goto(api + "/ui/upload")
    expect(page.get_by_role("button", name="Upload")).to_be_disabled()
