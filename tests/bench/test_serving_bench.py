"""bench/serving.py --quick against the real service and the naive server: every row measured
(not "not available"), with no failed request, and the targets table computed from them."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.serving import Endpoint, LoadPlan, Server, _check, _measure, _unavailable, warm_pool
from tests.support.api import REPO_ROOT, child_env

pytestmark = pytest.mark.timeout(240)

PROTOCOLS = {"native JSON", "V2 JSON", "V2 binary", "TF Serving"}


def test_quick_serving_bench_measures_every_protocol(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "bench/serving.py", "--quick", "--out-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert not (tmp_path / "serving.json").exists()  # --quick never overwrites the real run
    result = json.loads((tmp_path / "serving_quick.json").read_text())
    config, rows = result["config"], result["results"]
    assert config["quick"] is True and config["concurrency"] == [1, 4]
    assert rows["mlserver"] == [] and result["mlserver_version"] is None

    every = rows["service"] + rows["naive"]
    missing = [r for r in every if "not_available" in r]
    assert missing == []
    for row in every:
        assert row["errors"] == 0, row
        assert row["requests"] > 0 and row["throughput_rps"] > 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["server_cpu_ms_per_request"] is not None, row
        assert row["rows_per_s"] == pytest.approx(row["throughput_rps"] * row["batch"])

    service = rows["service"]
    singles = {(r["endpoint"], r["clients"]) for r in service if r["batch"] == 1}
    assert singles == {(p, c) for p in PROTOCOLS for c in (1, 4)}
    empty = [r for r in service if r["batch"] == 0]
    assert [(r["endpoint"], r["path"], r["clients"]) for r in empty] == [
        ("empty endpoint", "/v2/health/live", 1),
        ("empty endpoint", "/v2/health/live", 4),
    ]
    batched = {(r["model"], r["endpoint"]) for r in service if r["batch"] == 256}
    assert batched == {(m, p) for m in ("digits", "wide") for p in PROTOCOLS}
    assert [(r["endpoint"], r["clients"]) for r in rows["naive"]] == [
        ("naive predict", 1),
        ("naive predict", 4),
    ]

    # Four targets per protocol without MLServer, each with a measured ratio.
    targets = result["targets"]
    assert len(targets) == 4 * len(PROTOCOLS)
    assert all(t["value"] is not None and t["pass"] in (True, False) for t in targets)
    markdown = (tmp_path / "serving_quick.md").read_text()
    assert markdown.count("PASS") + markdown.count("FAIL") == len(targets)
    assert "not available" not in markdown


class _NotFound(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator expects

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"detail":"Not Found"}'
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def not_found_server() -> Iterator[Server]:
    """A real HTTP server on which every path is missing."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    yield Server(f"http://127.0.0.1:{port}", port, os.getpid(), "not found")
    httpd.shutdown()
    httpd.server_close()


def test_a_missing_endpoint_is_reported_and_its_answers_are_errors(
    not_found_server: Server,
) -> None:
    endpoint = Endpoint("V2 JSON", "POST", "/v2/models/none/infer", [b"{}"], rows=1)
    reason = _check(not_found_server, endpoint, None)
    assert reason is not None and reason.startswith("HTTP 404")
    row = _unavailable(endpoint, 32, reason)
    assert row["not_available"] == reason and "p50_ms" not in row

    # Measured anyway, a 404 is an error, never a latency sample.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        warm_pool(pool, 1)
        plan = LoadPlan(pool, processes=1, warmup_s=0.1, duration_s=0.5)
        measured = _measure(plan, not_found_server, endpoint, clients=2)
    assert measured["requests"] == 0 and measured["p50_ms"] is None
    assert measured["errors"] > 0 and measured["error_kinds"] == {"HTTP 404": measured["errors"]}
