"""The sandbox of the first load: its environment, its limits, how its deaths are told, and
the zygote that forks its children."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from service import model_sandbox
from service.errors import ArtifactRejected
from service.model_sandbox import (
    SandboxRequest,
    _well_formed,
    load_in_sandbox,
    sandbox_env,
)
from tests.support.api import REPO_ROOT, child_env


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        for task in tasks:
            children = (task / "children").read_text().split()
            for child in map(int, children):
                found |= {child} | _descendants(child)
    except FileNotFoundError:  # it exited meanwhile
        pass
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for an absent reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found |= set(map(int, (task / "children").read_text().split()))
    except FileNotFoundError:  # it exited meanwhile
        pass
    return found


def _zygotes(pid: int | None = None) -> set[int]:
    """The zygotes started by ``pid`` (this test process by default): its own children only,
    since servers that other tests of the session started have zygotes of their own."""
    found = set()
    for child in _children(os.getpid() if pid is None else pid):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[-2:-1] == [b"--zygote"]:
                found.add(child)
        except FileNotFoundError:
            pass
    return found


def _wait_until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


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
    # A forked load of this model takes ~60 ms; none takes 10.
    with pytest.raises(ArtifactRejected, match=r"took longer than 0\.01 s"):
        load_in_sandbox(model_bytes, _request(), wall_s=0.01)
    assert time.monotonic() - started < 30  # including a cold zygote start
    left = _descendants(os.getpid()) - before - _zygotes()
    assert not left


def test_a_load_past_the_memory_limit_is_refused_with_the_limit() -> None:
    # A Dense of 40000 x 30000 float32 weights (4.8 GiB) that the config alone declares.
    from tests.service.hostile.test_hostile_corpus import CASES

    (case,) = [case for case in CASES if case.name == "dense-4.8-gib-kernel-under-the-limit"]
    # It writes no canary.
    data = case.build(None)  # type: ignore[arg-type]
    with pytest.raises(ArtifactRejected, match=r"memory \(limit 2048 MiB"):
        load_in_sandbox(data, _request(), wall_s=120)
    with pytest.raises(ArtifactRejected, match=r"memory \(limit 300 MiB"):
        load_in_sandbox(data, _request(memory_mb=300), wall_s=120)


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


# -- the zygote ---------------------------------------------------------------------------------


def _work_dir(root: Path, model: bytes | None) -> Path:
    """A work directory as `load_in_sandbox` prepares it; ``None``: the model is a FIFO no one
    writes, so the child blocks opening it until it is killed."""
    root.mkdir()
    if model is None:
        os.mkfifo(root / model_sandbox.MODEL_FILE)
    else:
        (root / model_sandbox.MODEL_FILE).write_bytes(model)
    (root / model_sandbox.REQUEST_FILE).write_text(json.dumps(asdict(_request())))
    for name in (model_sandbox.REPLY_FILE, model_sandbox.LOG_FILE):
        (root / name).write_bytes(b"")
    return root


def test_one_zygote_forks_every_load_and_keeps_nothing_of_them(model_bytes: bytes) -> None:
    first = load_in_sandbox(model_bytes, _request(), wall_s=120)
    (zygote,) = _zygotes()
    started = time.monotonic()
    assert load_in_sandbox(model_bytes, _request(), wall_s=120) == first
    warm_s = time.monotonic() - started
    assert _zygotes() == {zygote}
    assert not _descendants(zygote)  # each child is reaped
    # Forked with no other thread alive (no lock a thread held is copied into a child).
    assert len(os.listdir(f"/proc/{zygote}/task")) == 1
    # Its pipes, /dev/null and its log: no upload, no sandbox directory, ever.
    fds = [os.readlink(f"/proc/{zygote}/fd/{fd}") for fd in os.listdir(f"/proc/{zygote}/fd")]
    assert len(fds) == 5 and not any("spectral-sandbox" in target for target in fds), fds
    home = os.readlink(f"/proc/{zygote}/cwd")
    assert "spectral-zygote-" in home and os.stat(home).st_mode & 0o777 == 0o500
    assert b"\0-P\0" in Path(f"/proc/{zygote}/cmdline").read_bytes()  # cwd not on sys.path
    environ = dict(
        item.split(b"=", 1)
        for item in Path(f"/proc/{zygote}/environ").read_bytes().split(b"\0")
        if b"=" in item
    )
    assert {k.decode() for k in environ} <= set(sandbox_env(Path(home)))
    assert environ[b"OPENBLAS_NUM_THREADS"] == b"1"
    print(f"warm sandboxed load: {warm_s:.2f} s")
    assert warm_s < 3


def test_concurrent_loads_share_the_zygote_one_at_a_time(model_bytes: bytes) -> None:
    # As uvicorn's thread pool calls it: each load gets its own child and its own answer.
    from concurrent.futures import ThreadPoolExecutor

    valid = load_in_sandbox(model_bytes, _request(), wall_s=120)
    small = _request(max_params=2000)
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(load_in_sandbox, model_bytes, small if i % 2 else _request(), 120)
            for i in range(8)
        ]
    for i, future in enumerate(futures):
        if i % 2:
            with pytest.raises(ArtifactRejected, match="the limit is 2000"):
                future.result()
        else:
            assert future.result() == valid
    assert len(_zygotes()) == 1


def test_a_hostile_load_changes_only_its_own_child(model_bytes: bytes, tmp_path: Path) -> None:
    # Straight to the sandbox, past the parent's policy checks, so each reaches Keras in the
    # child: a backend switch, a floatx switch, unsafe deserialization switched on, and a
    # StringLookup that makes the child import TensorFlow; then one that runs out of memory.
    from tests.service.hostile.test_hostile_corpus import CASES, Canaries

    canaries = Canaries(tmp_path, tmp_path / "w.canary", tmp_path / "s.txt", tmp_path / "s.h5")
    canaries.secret_text.write_text("secret")
    valid = load_in_sandbox(model_bytes, _request(), wall_s=120)
    (zygote,) = _zygotes()
    names = (
        "set-backend",
        "set-floatx",
        "enable-unsafe-deserialization",
        "string-lookup-vocabulary-file",
    )
    for case in [case for case in CASES if case.name in names]:
        try:
            load_in_sandbox(case.build(canaries), _request(), wall_s=120)
        except ArtifactRejected:
            pass
        assert load_in_sandbox(model_bytes, _request(), wall_s=120) == valid, case.name
    big = next(case for case in CASES if case.name == "dense-4.8-gib-kernel-under-the-limit")
    with pytest.raises(ArtifactRejected, match=r"memory \(limit 2048 MiB"):
        load_in_sandbox(big.build(canaries), _request(), wall_s=120)
    assert load_in_sandbox(model_bytes, _request(), wall_s=120) == valid
    assert _zygotes() == {zygote}
    assert "tensorflow" not in Path(f"/proc/{zygote}/maps").read_text()
    assert not canaries.written.exists()


def test_a_hung_child_is_killed_at_the_wall_limit_and_the_zygote_serves_on(
    model_bytes: bytes, tmp_path: Path
) -> None:
    zygote = model_sandbox._Zygote()
    try:
        started = time.monotonic()
        assert zygote.run(_work_dir(tmp_path / "hung", None), wall_s=1.0) is None
        assert 1.0 <= time.monotonic() - started < 10
        assert not _descendants(zygote.process.pid)
        valid = _work_dir(tmp_path / "valid", model_bytes)
        assert zygote.run(valid, wall_s=60) == 0
        reply = json.loads((valid / model_sandbox.REPLY_FILE).read_text())
        assert reply["metadata"]["param_count"] == 2874
    finally:
        zygote.close()
    assert zygote.process.poll() is not None


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["dead", "hung"])
def test_a_dead_or_hung_zygote_is_replaced_and_the_load_still_answers(
    fault: signal.Signals, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    valid = load_in_sandbox(model_bytes, _request(), wall_s=120)
    (zygote,) = _zygotes()
    monkeypatch.setattr(model_sandbox, "_ZYGOTE_MARGIN_S", 1.0)
    os.kill(zygote, fault)
    # This load falls back to a freshly spawned child, and the failed zygote is killed.
    assert load_in_sandbox(model_bytes, _request(), wall_s=120) == valid
    assert not _alive(zygote)
    assert load_in_sandbox(model_bytes, _request(), wall_s=120) == valid
    (replacement,) = _zygotes()
    assert replacement != zygote


def test_a_zygote_exits_with_the_process_that_started_it_and_kills_its_load(
    tmp_path: Path,
) -> None:
    # The "server" starts a zygote and has it fork a load that blocks forever.
    script = textwrap.dedent(
        f"""
        import json, pathlib, sys
        from service import model_sandbox
        work = pathlib.Path({str(tmp_path / "work")!r})
        work.mkdir()
        import os; os.mkfifo(work / "model.keras")
        (work / "request.json").write_text(sys.argv[1])
        (work / "reply.json").write_bytes(b""); (work / "stderr.log").write_bytes(b"")
        zygote = model_sandbox._Zygote()
        print(zygote.process.pid, flush=True)
        zygote.run(work, wall_s=600)
        """
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(asdict(_request()))],
        cwd=REPO_ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        zygote = int(server.stdout.readline())
        assert _wait_until(lambda: _descendants(zygote), 30), "no load was forked"
        (load,) = _descendants(zygote)
    finally:
        server.kill()
        server.wait()
    assert _wait_until(lambda: not _alive(zygote) and not _alive(load), 10)
