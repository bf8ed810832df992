"""Schema-driven fuzzing of the whole HTTP API with schemathesis, against a real server.

Schemathesis reads /openapi.json and sends generated requests (valid and invalid) to every
operation: coverage cases (bounds, wrong types), random fuzzing, and stateful sequences that
follow links it infers from Location headers and response bodies. Every response must be
non-5xx, have a documented status, content type and headers, and match the documented body
schema; schema-invalid requests must be refused.

The server is seeded with a real model, an alias and a dataset, and the fuzzer draws path
``model_id``/``version`` and body ids from those half of the time, so predict, reports and
aliases are reached with hostile inputs instead of 404s.

Short by default (CI, well under 90 s); longer on demand:

    SPECTRAL_FUZZ_EXAMPLES=2000 SPECTRAL_FUZZ_SECONDS=1800 \
        .venv/bin/pytest tests/service/api/test_api_fuzz.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.api import RunningApi, launch_api, stop_api
from tests.support.digits import digits_npz
from tests.support.uploads import upload

EXAMPLES = int(os.environ.get("SPECTRAL_FUZZ_EXAMPLES", "10"))
SECONDS = int(os.environ.get("SPECTRAL_FUZZ_SECONDS", "35"))
SEED = os.environ.get("SPECTRAL_FUZZ_SEED", "20261201")
MODEL = "fuzz-digits"
# Every check but positive_data_acceptance (a schema-valid name, file or percentile can still
# break a business rule: 404/415/422 are right answers) and use_after_free (alias history
# outlives the alias on purpose).
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,negative_data_rejection,"
    "missing_required_header,unsupported_method,allow_header_conformance,"
    "ensure_resource_availability,ignored_auth"
)


def _config(dataset_id: str) -> str:
    return f"""
[dictionaries.models]
values = ["{MODEL}"]

[dictionaries.versions]
values = [1]

[dictionaries.datasets]
values = ["{dataset_id}"]

[dictionaries.aliases]
values = ["production"]

[parameters]
"path.model_id" = {{ dictionary = "models", probability = 0.5 }}
"path.version" = {{ dictionary = "versions", probability = 0.5 }}
"path.alias" = {{ dictionary = "aliases", probability = 0.5 }}
"path.dataset_id" = {{ dictionary = "datasets", probability = 0.5 }}
"body.model_id" = {{ dictionary = "models", probability = 0.5 }}
"body.dataset_id" = {{ dictionary = "datasets", probability = 0.5 }}
"query.model_id" = {{ dictionary = "models", probability = 0.5 }}
"""


def _seed(api: RunningApi, model_bytes: bytes) -> str:
    with httpx.Client(base_url=api, timeout=60) as client:
        created = upload(client, MODEL, model_bytes)
        assert created.status_code == 201, created.text
        alias = client.put(f"/models/{MODEL}/aliases/production", json={"version": 1})
        assert alias.status_code == 200, alias.text
        dataset = client.post(
            "/datasets", files={"file": ("d.npz", digits_npz(n=64), "application/octet-stream")}
        )
        assert dataset.status_code == 201, dataset.text
        return str(dataset.json()["id"])


def test_fuzzing_the_openapi_finds_no_5xx_and_no_undocumented_response(
    tmp_path: Path, model_bytes: bytes
) -> None:
    # No worker: POST /prune only queues jobs on the embedded broker.
    api = launch_api({"SPECTRAL_MAX_BATCH": "64"}, tmp_path)
    try:
        config = tmp_path / "schemathesis.toml"
        config.write_text(_config(_seed(api, model_bytes)))
        st = Path(sys.executable).with_name("st")
        result = subprocess.run(
            [str(st), "--config-file", str(config), "run", f"{api}/openapi.json"]
            + ["--checks", CHECKS, "--max-examples", str(EXAMPLES), "--seed", SEED]
            + ["--max-time", str(SECONDS), "--workers", "1", "--request-timeout", "30"]
            + ["--report", "junit", "--report-dir", str(tmp_path / "report")],
            capture_output=True,
            text=True,
            timeout=SECONDS + 120,
            cwd=tmp_path,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-20000:]
        selected = re.search(r"Selected: (\d+)/(\d+)", output)
        tested = re.search(r"Tested: (\d+)", output)
        assert selected and tested, output[-3000:]
        assert int(tested.group(1)) == int(selected.group(1)) == int(selected.group(2))
        # The server's own count, independent of schemathesis: no 5xx at all, and the seeded
        # model's predict routes answered generated inputs (not just 404s).
        metrics = httpx.get(f"{api}/metrics", timeout=30).text
        statuses = re.findall(r'spectral_http_requests_total\{[^}]*status="(\d+)"', metrics)
        assert statuses and not [s for s in statuses if s.startswith("5")], metrics
        reached = re.findall(r'route="/models/\{model_id\}/predict",status="(?!404)\d+"', metrics)
        assert reached, metrics
    finally:
        stop_api(api)
    assert "Traceback" not in api.log_text(), api.log_text()[-6000:]
