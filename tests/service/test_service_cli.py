"""The ``spectral`` command line: server commands, the local prune, and a plain install."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.api import REPO_ROOT, child_env, launch_api, stop_api


def test_help_lists_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for command in ("serve", "api", "worker", "prune"):
        assert command in result.stdout, result.stdout


def test_api_command_serves_on_the_given_port(tmp_path: Path) -> None:
    api = launch_api(None, tmp_path)  # `spectral api --host 127.0.0.1 --port <free>`
    try:
        assert httpx.get(f"{api}/models", timeout=10).json() == {"data": [], "count": 0}
        assert (tmp_path / "data" / "registry.db").is_file()
    finally:
        stop_api(api)


@pytest.mark.parametrize("access_log", [True, False])
def test_api_access_log_is_plain_text_and_can_be_turned_off(
    tmp_path: Path, access_log: bool
) -> None:
    env = {"SPECTRAL_LOG_LEVEL": "INFO", "SPECTRAL_ACCESS_LOG": str(access_log).lower()}
    api = launch_api(env, tmp_path)
    try:
        assert httpx.get(f"{api}/models/nope", timeout=10).status_code == 404
    finally:
        stop_api(api)
    log = api.log_text()
    lines = [line for line in log.splitlines() if '"GET /models/nope HTTP/1.1" 404' in line]
    if not access_log:
        assert lines == [], log[-2000:]
        return
    # One plain line (timestamp, client, request, status), not Rich's columns, which cost as
    # much server CPU as a predict.
    assert len(lines) == 1, log[-2000:]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} 127\.0\.0\.1:\d+ - ", lines[0])
    assert "INFO" not in lines[0]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env({"TF_CPP_MIN_LOG_LEVEL": "3"}),
    )


def test_prune_command_writes_a_smaller_model_and_report(
    tmp_path: Path, digits_model_path: Path, digits_data: tuple[np.ndarray, np.ndarray]
) -> None:
    import json

    import keras

    import spectral

    x, y = digits_data
    np.savez(tmp_path / "val.npz", x=x[:300], y=y[:300])
    out, report = tmp_path / "small.keras", tmp_path / "report.json"
    result = _cli(
        "prune",
        str(digits_model_path),
        str(out),
        "--data",
        str(tmp_path / "val.npz"),
        "--max-delta-percent",
        "5",
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(report.read_text())
    assert summary["method"] == "metric"
    assert summary["params_after"] < summary["params_before"]
    assert summary["metric_after"] >= summary["metric_before"] * 0.95
    small = keras.saving.load_model(out, safe_mode=True)
    assert small.count_params() == summary["params_after"]
    # The CLI's model is the library's own pruning at the chosen percentile.
    original = keras.saving.load_model(digits_model_path, safe_mode=True)
    expected = spectral.prune_percentile(original, summary["percentile"])
    np.testing.assert_allclose(
        small.predict(x[:16], verbose=0), expected.predict(x[:16], verbose=0), atol=1e-5
    )


def test_prune_command_reconstructs_on_calibration_rows(
    tmp_path: Path, digits_model_path: Path, digits_data: tuple[np.ndarray, np.ndarray]
) -> None:
    import json

    import keras

    import spectral

    x, y = digits_data
    np.savez(tmp_path / "val.npz", x=x[:300], y=y[:300])
    np.savez(tmp_path / "calibration.npz", x=x[300:800])
    out, report = tmp_path / "small.keras", tmp_path / "report.json"
    result = _cli(
        "prune",
        str(digits_model_path),
        str(out),
        "--percentile",
        "60",
        "--data",
        str(tmp_path / "val.npz"),
        "--calibration",
        str(tmp_path / "calibration.npz"),
        "--reconstruct",
        "least_squares",
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(report.read_text())
    assert summary["reconstruction_method"] == "least_squares"
    assert summary["calibration_rows"] == 500
    errors = summary["reconstruction_errors"]
    assert errors and all(e["after"] <= e["before"] for e in errors.values()), errors
    original = keras.saving.load_model(digits_model_path, safe_mode=True)
    expected, _ = spectral.prune(
        original, percentile=60, calibration={"x": x[300:800]}, reconstruct="least_squares"
    )
    small = keras.saving.load_model(out, safe_mode=True)
    np.testing.assert_allclose(
        small.predict(x[:16], verbose=0), expected.predict(x[:16], verbose=0), atol=1e-4
    )


def test_prune_command_recovers_on_its_own_data_with_distillation(
    tmp_path: Path, digits_model_path: Path, digits_data: tuple[np.ndarray, np.ndarray]
) -> None:
    import json

    x, y = digits_data
    np.savez(tmp_path / "val.npz", x=x[:300], y=y[:300])
    np.savez(tmp_path / "train.npz", x=x[300:800])  # unlabeled: distillation needs no y
    out, report = tmp_path / "small.keras", tmp_path / "report.json"
    result = _cli(
        "prune",
        str(digits_model_path),
        str(out),
        "--percentile",
        "70",
        "--data",
        str(tmp_path / "val.npz"),
        "--recover-data",
        str(tmp_path / "train.npz"),
        "--recover-epochs",
        "1",
        "--distill",
        "--temperature",
        "3",
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(report.read_text())
    assert summary["recovery_epochs"] == 1
    assert summary["distill"] is True and summary["temperature"] == 3.0
    assert summary["metric_after"] is not None and out.is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reconstruct", "least_squares"], "--reconstruct needs calibration rows"),
        (["--distill"], "--distill trains on the unpruned model's outputs"),
        (["--recover-epochs", "2"], "--recover-epochs needs --recover-data"),
        # Evaluation data is never trained on: --data alone does not make recovery data.
        (["--recover-epochs", "2", "--data", "{val}"], "--recover-epochs needs --recover-data"),
        (["--recover-data", "{val}"], "--recover-data is only used by recovery"),
        (["--temperature", "3"], "--temperature is only used by --distill"),
        (
            ["--recover-epochs", "1", "--recover-data", "{unlabeled}"],
            "needs arrays ['x', 'y']. Missing: ['y']",
        ),
        (["--reconstruct", "svd", "--data", "{val}"], "reconstruct"),
    ],
)
def test_prune_command_explains_bad_compression_options(
    tmp_path: Path,
    digits_model_path: Path,
    digits_data: tuple[np.ndarray, np.ndarray],
    args: list[str],
    message: str,
) -> None:
    x, y = digits_data
    np.savez(tmp_path / "val.npz", x=x[:50], y=y[:50])
    np.savez(tmp_path / "unlabeled.npz", x=x[50:100])
    files = {"val": tmp_path / "val.npz", "unlabeled": tmp_path / "unlabeled.npz"}
    args = [arg.format(**files) for arg in args]
    out = tmp_path / "o.keras"
    result = _cli("prune", str(digits_model_path), str(out), "--percentile", "40", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_prune_command_reports_bad_input(tmp_path: Path, digits_model_path: Path) -> None:
    result = _cli("prune", str(digits_model_path), str(tmp_path / "o.keras"), "--percentile", "150")
    assert result.returncode == 2
    assert "percentile" in result.stderr and "150" in result.stderr
    assert not (tmp_path / "o.keras").exists()


# Makes the [service] extra's packages unimportable, as in `pip install spectral-pruning`.
_PLAIN_INSTALL = """
import sys
SERVICE_ONLY = {"fastapi", "starlette", "uvicorn", "celery", "kombu", "sqlalchemy", "alembic",
                "pydantic_settings", "psycopg", "redis", "prometheus_client", "httpx"}
class WithoutServiceExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in SERVICE_ONLY:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, WithoutServiceExtra())
from service.cli import app
app()
"""


def test_plain_install_prunes_and_names_the_extra_for_servers(
    tmp_path: Path, digits_model_path: Path
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _PLAIN_INSTALL, *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env=child_env({"TF_CPP_MIN_LOG_LEVEL": "3"}),
        )

    out = tmp_path / "small.keras"
    pruned = run("prune", str(digits_model_path), str(out), "--percentile", "40")
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert out.is_file()
    for command in ("serve", "api", "worker"):
        refused = run(command)
        assert refused.returncode == 2, (command, refused.stderr[-3000:])
        assert 'pip install "spectral-pruning[service]"' in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr


def _blocked(packages: set[str], *args: str, entry: str = "main") -> subprocess.CompletedProcess:
    """Runs the CLI's console-script entry (`service.cli:main`) with ``packages`` missing."""
    code = f"""
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(packages)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
from service.cli import {entry}
{entry}()
"""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )


def test_help_documents_the_client_commands_and_exit_codes() -> None:
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    for command in (
        "push",
        "pull",
        "report",
        "jobs",
        "models",
        "aliases",
        "datasets",
        "quickstart",
    ):
        assert command in result.stdout
    assert "Exit codes: 0 success; 1 the job succeeded but the promotion gate" in " ".join(
        result.stdout.replace("│", " ").split()
    )
    submit = _cli("jobs", "submit", "--help")
    assert "--promote" in submit.stdout and "--cancel-on-interrupt" in submit.stdout
    assert "SPECTRAL_URL" in submit.stdout and "SPECTRAL_API_TOKEN" in submit.stdout


def test_without_the_cli_packages_spectral_names_the_client_extra() -> None:
    result = _blocked({"typer", "rich", "click"}, "models", "list")
    assert result.returncode == 2, result.stderr
    assert 'pip install "spectral-pruning[client]"' in result.stderr
    assert "Traceback" not in result.stderr


def test_without_the_client_extra_client_commands_name_it() -> None:
    # typer (and with it pydantic, which typer 0.29 requires) comes with the plain install;
    # httpx only with [client].
    for args in (["models", "list"], ["jobs", "show", "x"], ["push", "m.keras", "--name", "m"]):
        result = _blocked({"httpx"}, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert 'pip install "spectral-pruning[client]"' in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_quickstart_without_scikit_learn_names_what_to_install(tmp_path: Path) -> None:
    result = _blocked({"sklearn"}, "quickstart", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "sklearn" in result.stderr and "scikit-learn" in result.stderr
    assert not list(tmp_path.iterdir())


def test_prune_without_a_keras_backend_names_the_extra(
    tmp_path: Path, digits_model_path: Path
) -> None:
    result = _blocked(
        {"tensorflow"},
        "prune",
        str(digits_model_path),
        str(tmp_path / "o.keras"),
        "--percentile",
        "40",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'pip install "spectral-pruning[tensorflow]"' in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o.keras").exists()


def test_tokens_new_prints_a_token_the_file_entry_grants(tmp_path: Path) -> None:
    from service.tokens import TokenTable

    made = _cli("tokens", "new", "--name", "ci-a", "--scope", "write", "--models", "team-a-*")
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    token, entry = lines[0], "\n".join(lines[1:]) + "\n"
    assert token not in entry  # the file keeps only the hash
    token_file = tmp_path / "tokens.toml"
    token_file.write_text(entry)
    granted = TokenTable.load(token_file).find(token)
    assert granted is not None
    assert granted.name == "ci-a" and granted.access == "write"
    assert granted.covers("team-a-digits") and not granted.covers("team-b-digits")
    assert TokenTable.load(token_file).find(token + "x") is None


def test_tokens_new_refuses_an_unknown_scope_and_no_models() -> None:
    bad_scope = _cli("tokens", "new", "--name", "x", "--scope", "admin", "--models", "a")
    assert bad_scope.returncode == 2 and "read or write" in bad_scope.stderr
    no_models = _cli("tokens", "new", "--name", "x")
    assert no_models.returncode == 2 and "--models" in no_models.stderr
