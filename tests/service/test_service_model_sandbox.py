"""The sandbox of the first load: its environment, its limits, and how its deaths are told."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from service.errors import ArtifactRejected
from service.model_sandbox import SandboxRequest, _well_formed, load_in_sandbox, sandbox_env


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in map(int, children):
            found |= {child} | _descendants(child)
    return found


def _request(**overrides: int) -> SandboxRequest:
    values = {
        "memory_mb": 2048,
        "cpu_s": 60,
        "file_size_bytes": 64 * 1024 * 1024,
        "max_params": 50_000_000,
        "declared_params": 5000,
    }
    return SandboxRequest(**{**values, **overrides})


def test_the_child_environment_holds_no_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "SPECTRAL_API_TOKEN": "tok-123",
        "SPECTRAL_DATABASE_URL": "postgresql://u:pw@db/x",
        "SPECTRAL_BROKER_URL": "redis://:pw@broker/0",
        "DATABASE_URL": "postgresql://u:pw@db/y",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "GITHUB_TOKEN": "gh-token",
        "MY_PASSWORD": "hunter2",
        "PYTHONSTARTUP": "/tmp/evil.py",
        "LD_PRELOAD": "/tmp/evil.so",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    env = sandbox_env(tmp_path)
    assert not set(secrets) & set(env)
    assert not {value for value in secrets.values()} & set(env.values())
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["KERAS_BACKEND"] == "numpy"


def test_a_load_past_the_wall_limit_is_killed_with_its_process_group(model_bytes: bytes) -> None:
    before = _descendants(os.getpid())
    started = time.monotonic()
    with pytest.raises(ArtifactRejected, match=r"took longer than 0\.5 s"):
        load_in_sandbox(model_bytes, _request(), wall_s=0.5)
    assert time.monotonic() - started < 10
    left = _descendants(os.getpid()) - before
    assert not left


def test_a_load_past_the_memory_limit_is_refused_with_the_limit(model_bytes: bytes) -> None:
    # Importing Keras alone needs more address space than 300 MiB.
    with pytest.raises(ArtifactRejected, match=r"memory \(limit 300 MiB"):
        load_in_sandbox(model_bytes, _request(memory_mb=300), wall_s=120)


def test_a_valid_model_loads_and_its_metadata_comes_back(model_bytes: bytes) -> None:
    metadata = load_in_sandbox(model_bytes, _request(), wall_s=120)
    assert metadata["param_count"] == 2874
    assert [layer["units"] for layer in metadata["spectral_layers"]] == [32, 16]
    # Loaded with the default limits on: Keras's numpy backend fits in 2 GiB and 256 files.
    # What a subverted child might send instead is refused, not stored.
    assert _well_formed(metadata)
    for key, bad in [
        ("param_count", -1),
        ("param_count", "2874"),
        ("inputs", []),
        ("inputs", [{"name": "x", "shape": ["<script>"], "dtype": "float32"}]),
        ("outputs", [{"name": "y", "shape": [None, 2], "dtype": "float32", "extra": 1}]),
        ("keras_class", "x" * 101),
        ("spectral_layers", [{"name": "s", "units": 1.5}]),
    ]:
        assert not _well_formed({**metadata, key: bad}), (key, bad)
    with pytest.raises(ArtifactRejected, match="has 2874 parameters; the limit is 2000"):
        load_in_sandbox(model_bytes, _request(max_params=2000), wall_s=120)
