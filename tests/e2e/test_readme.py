"""README's shell examples, run as pasted, in order, against a live `spectral serve`.

Every ```bash block of README.md runs in one bash session (so ``$DATASET`` and ``$JOB`` carry
over, as in a terminal), in a fresh directory holding the checkout's ``.venv`` and ``deploy/``,
with only the server's address substituted for ``localhost:8000`` (and ``SPECTRAL_URL`` set to
it). Blocks marked ``<!-- readme-test: skip (...) -->`` must only start servers or run the suite.
curl runs with ``--fail-with-body``, so an example the server refuses fails the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.deploy.test_ci_example import Served, served  # noqa: F401  (the session's server)
from tests.support.api import REPO_ROOT, child_env

pytestmark = pytest.mark.timeout(600)

README = REPO_ROOT / "README.md"
SKIP_MARK = re.compile(r"<!-- readme-test: skip \((?P<why>[^)]+)\) -->")
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\s*$")
# The only commands a skipped block may hold: they start a server or run (part of) the suite,
# optionally after VAR=value settings.
SKIPPABLE = re.compile(
    r"^(?:[A-Z_]+=\S+ )*(?:scripts/serve|scripts/test|spectral serve|\.venv/bin/pytest)\b"
)


def readme_blocks(text: str) -> list[tuple[str, str | None]]:
    """``(code, skip reason or None)`` for each ```bash block, in order, dedented."""
    lines = text.splitlines()
    blocks: list[tuple[str, str | None]] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None or not opening.group("lang"):
            index += 1
            continue
        indent, lang = len(opening.group("indent")), opening.group("lang")
        before = next((line for line in reversed(lines[:index]) if line.strip()), "")
        skip = SKIP_MARK.search(before)
        end = index + 1
        while not re.match(rf"^ {{{indent}}}```\s*$", lines[end]):
            end += 1
        if lang == "bash":
            code = "\n".join(line[indent:] for line in lines[index + 1 : end])
            blocks.append((code, skip.group("why") if skip else None))
        index = end + 1
    return blocks


def test_the_readme_parser_sees_every_block() -> None:
    blocks = readme_blocks(README.read_text())
    run = [code for code, skip in blocks if skip is None]
    assert len(blocks) == README.read_text().count("```bash")
    assert any("spectral quickstart" in code for code in run)
    assert any("deploy/ci/compress.sh" in code for code in run)
    for code, skip in blocks:
        if skip is not None:
            commands = [line.split("#")[0].strip() for line in code.splitlines()]
            commands = [command for command in commands if command]
            assert commands and all(SKIPPABLE.match(c) for c in commands), (skip, code)


def test_readme_examples_run_as_pasted(
    served: Served,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = served.ready()
    port = url.rsplit(":", 1)[1]
    blocks = [code for code, skip in readme_blocks(README.read_text()) if skip is None]
    script = ["set -eo pipefail", 'curl() { command curl -sS --fail-with-body "$@"; }']
    for number, code in enumerate(blocks, start=1):
        code = code.replace("localhost:8000", f"127.0.0.1:{port}")
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        script += [f'echo ">>> README block {number} at $(date +%T)" >&2', code]
    (tmp_path / "readme.sh").write_text("\n".join(script) + "\n")
    # The reader's checkout: its .venv (scripts/serve made it) and deploy/.
    for name in (".venv", "deploy"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    env = child_env({"SPECTRAL_URL": url})
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(REPO_ROOT))
    )
    result = subprocess.run(
        ["bash", str(tmp_path / "readme.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
        f"--- stderr\n{result.stderr[-6000:]}"
    )
    assert f">>> README block {len(blocks)}" in result.stderr
    print(*re.findall(r">>> README block .*", result.stderr), sep="\n")  # where the time goes

    # What the examples say they made.
    for made in (
        "digits.keras",
        "digits.npz",
        "small.keras",
        "report.json",
        "v1.keras",
        "report.png",
        "production.keras",
        "spectral-out/report.png",
    ):
        assert (tmp_path / made).is_file(), made
    assert (tmp_path / "v1.keras").read_bytes() == (tmp_path / "digits.keras").read_bytes()
    model = httpx.get(f"{url}/models/digits", timeout=10).json()
    history = httpx.get(f"{url}/models/digits/aliases/production/history", timeout=10).json()
    reasons = [event["reason"] for event in reversed(history["data"])]
    # curl PUT, the CLI's gate, its rollback, the compare-and-set, then the CI script's gate.
    assert reasons == ["set", "promotion", "rollback", "set", "promotion"], history
    ci_job = json.loads((tmp_path / "spectral-out" / "job.json").read_text())
    assert model["aliases"]["production"] == ci_job["result"]["version"]
    assert history["data"][0]["job_id"] == ci_job["id"]
