"""The first load of an untrusted model, in a short-lived process of its own.

`load_in_sandbox` writes the upload into a fresh empty directory and runs
``python -m service.model_sandbox <dir>`` there. The child limits itself (address space, CPU
time, open files, file size) before it reads anything, checks the HDF5 weights' structure, loads
the model with Keras's ``safe_mode``, and prints its metadata as JSON. It gets an environment
built from an allow-list (no tokens, database or broker URLs), HOME and TMPDIR in its own
directory, and no GPU. Whatever the model does while loading, it does there: a crash, a memory
blow-up or a hang kills that process, never the API or the worker, and answers 422.

The child runs Keras on its numpy backend: the load only deserializes and builds the model, so
it needs no TensorFlow, and this keeps its start-up time and address space small (see the README
section "Security: untrusted models" for the measured figures).

Importing Python and Keras is still most of a fresh child's seconds, so each API or worker process
starts, on its first upload, a *zygote*: a long-lived ``python -m service.model_sandbox --zygote``
with the same allow-listed environment and an empty directory of its own, which imports Keras
and this module and then waits on its stdin. It never opens an upload. Per load it ``fork()``s a
child that does exactly what a fresh child does (its own session, its work directory, its limits,
one load, the reply in files, exit), waits for it under the wall limit, kills its process group,
and answers the child's exit status. A child's crash, memory corruption or changed Keras state
stays in that child's copy of the process. A zygote that dies, hangs or answers nonsense is
killed and the load runs again in a freshly spawned child; a zygote whose parent goes away reads
EOF on its stdin and exits, killing the child it is waiting for.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.errors import ArtifactLimitExceeded, ArtifactRejected

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
REQUEST_FILE = "request.json"
REPLY_FILE = "reply.json"
LOG_FILE = "stderr.log"
SANDBOX_BACKEND = "numpy"
# TensorFlow/JAX libraries and Python's imports keep ~100 files open at once; 256 leaves room
# for the model's own files and nothing more.
OPEN_FILES = 256
_MAX_REPLY_BYTES = 1024 * 1024
# How native code reports an allocation refused by RLIMIT_AS (a library mapping, numpy, C++).
_OUT_OF_MEMORY = ("MemoryError", "failed to map segment", "Cannot allocate memory", "bad_alloc")
# Variables the child may inherit; everything else (tokens, database and broker URLs, cloud
# credentials) is dropped.
_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
# -P: the working directory is not on sys.path, so no file a load writes there is ever imported.
_PYTHON = (sys.executable, "-P")
ZYGOTE_FLAG = "--zygote"
# Zygotes per API or worker process: each holds Keras's imports (~300 MiB resident, shared
# copy-on-write with its children). A load waits this long for a busy one (a valid load takes
# a fraction of a second), then spawns a fresh child instead.
_MAX_ZYGOTES = 1
_ZYGOTE_BUSY_WAIT_S = 3.0
# A cold start imports Keras on a machine that may be busy; past this the zygote is given up.
_ZYGOTE_START_S = 120.0
# How long past the wall limit a zygote may take to kill, reap and report its child.
_ZYGOTE_MARGIN_S = 10.0
# After a zygote fails to start, or two fail in a row, loads spawn fresh children for this long
# before trying again.
_ZYGOTE_RETRY_S = 300.0
_MAX_CONTROL_LINE = 64 * 1024


@dataclass(frozen=True)
class SandboxRequest:
    """What the child is told: its limits, and the parameter bounds to check."""

    memory_mb: int
    cpu_s: int
    file_size_bytes: int
    max_params: int
    declared_params: int


# -- the parent side --------------------------------------------------------------------------


def sandbox_env(work_dir: Path) -> dict[str, str]:
    """The child's whole environment: an allow-list, its own HOME, the parent's import path."""
    env = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
    # The parent's sys.path, so the child imports this very `service`, `spectral` and Keras.
    paths = [p for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p)]
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(paths),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "HOME": str(work_dir),
            "TMPDIR": str(work_dir),
            "KERAS_HOME": str(work_dir / ".keras"),
            "KERAS_BACKEND": SANDBOX_BACKEND,
            "CUDA_VISIBLE_DEVICES": "",
            "JAX_PLATFORMS": "cpu",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        }
    )
    return env


def load_in_sandbox(data: bytes, request: SandboxRequest, wall_s: float) -> dict[str, Any]:
    """Loads ``data`` in a fresh limited process and returns its `model_metadata`.

    The process is forked by an idle zygote of this process (started on first use), or spawned
    afresh when none is available or the zygote fails.

    Raises:
        ArtifactRejected: the child refused the model, died (memory, CPU, signal) or ran past
            ``wall_s``; the message says which, with the limit.
    """
    zygote = _pool.acquire()
    if zygote is not None:
        try:
            return _load_once(data, request, wall_s, zygote.run)
        except ZygoteFailed as exc:
            logger.warning("model sandbox zygote failed (%s); loading in a fresh process", exc)
            _pool.discard(zygote)
            zygote = None
        finally:
            if zygote is not None:
                _pool.release(zygote)
    return _load_once(data, request, wall_s, _spawn)


def _load_once(
    data: bytes,
    request: SandboxRequest,
    wall_s: float,
    run: Callable[[Path, float], int | None],
) -> dict[str, Any]:
    """One load in a fresh work directory; ``run`` starts the child and returns its exit status
    (Popen's convention, None past ``wall_s``)."""
    with tempfile.TemporaryDirectory(prefix="spectral-sandbox-") as tmp:
        work_dir = Path(tmp)
        (work_dir / MODEL_FILE).write_bytes(data)
        (work_dir / REQUEST_FILE).write_text(json.dumps(asdict(request)))
        # Both streams go to files in the sandbox directory (bounded by the child's file-size
        # limit) and are read back in bounded amounts: a misbehaving child cannot flood this
        # process through a pipe. They exist before the child starts, so a child that dies at
        # once leaves them empty rather than missing.
        (work_dir / REPLY_FILE).write_bytes(b"")
        (work_dir / LOG_FILE).write_bytes(b"")
        started = time.monotonic()
        returncode = run(work_dir, wall_s)
        if returncode is None:
            raise ArtifactLimitExceeded(
                f"Loading the model took longer than {wall_s:g} s (SPECTRAL_SANDBOX_WALL_S); "
                "refused"
            )
        elapsed = time.monotonic() - started
        out = _read_head(work_dir / REPLY_FILE, _MAX_REPLY_BYTES + 1)
        log_tail = _read_tail(work_dir / LOG_FILE, 4000).decode(errors="replace")
    logger.info("sandboxed model load: exit %s in %.2f s", returncode, elapsed)
    reply = _parse_reply(out)
    if reply is None:
        logger.warning("model sandbox died (exit %s): %s", returncode, log_tail)
        reason, is_limit = _death_reason(returncode, request, log_tail)
        raise (ArtifactLimitExceeded if is_limit else ArtifactRejected)(reason)
    if "rejected" in reply:
        refusal = ArtifactLimitExceeded if reply.get("limit") else ArtifactRejected
        raise refusal(str(reply["rejected"])[:1000])
    metadata = reply.get("metadata")
    if not isinstance(metadata, dict) or not _well_formed(metadata):
        # Only a child that misbehaved (a bug, or code the model ran) sends this.
        logger.warning("model sandbox sent malformed metadata")
        raise ArtifactRejected("The model load gave no usable metadata; refused")
    return metadata


def _spawn(work_dir: Path, wall_s: float) -> int | None:
    """Runs the child as a new ``python -m service.model_sandbox <work_dir>``."""
    with (
        open(work_dir / REPLY_FILE, "wb") as reply_out,
        open(work_dir / LOG_FILE, "wb") as log_out,
    ):
        process = subprocess.Popen(
            [*_PYTHON, "-m", "service.model_sandbox", str(work_dir)],
            cwd=work_dir,
            env=sandbox_env(work_dir),
            stdin=subprocess.DEVNULL,
            stdout=reply_out,
            stderr=log_out,
            start_new_session=True,
        )
        try:
            return process.wait(timeout=wall_s)
        except subprocess.TimeoutExpired:
            return None
        finally:
            _kill_group(process.pid)
            process.wait()


class ZygoteFailed(Exception):
    """A zygote died, hung, or answered something other than the protocol."""


class _Zygote:
    """One zygote process and the pipes to it; serves one load at a time."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="spectral-zygote-"))
        self._buffer = b""
        self.in_doubt = False
        try:
            with open(self.home / LOG_FILE, "wb") as log:
                self.process = subprocess.Popen(
                    [*_PYTHON, "-m", "service.model_sandbox", ZYGOTE_FLAG],
                    cwd=self.home,
                    env=sandbox_env(self.home),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    # Its own session: a Ctrl-C meant for the server does not reach it; it
                    # ends when the server's end of its stdin closes.
                    start_new_session=True,
                )
            self._receive("ready", _ZYGOTE_START_S)
        except BaseException:
            self.close()
            raise

    def run(self, work_dir: Path, wall_s: float) -> int | None:
        """Has the zygote fork a child that loads ``work_dir``; returns its exit status.

        Raises:
            ZygoteFailed: the zygote did not answer in time or as the protocol says; the child
                it may have started is killed.
        """
        # Until the answer arrives the pipe holds half a conversation: a zygote left so by an
        # exception (an interrupt, say) is not lent again.
        self.in_doubt = True
        self._send({"work_dir": str(work_dir), "wall_s": wall_s})
        child = self._receive("pid", _ZYGOTE_MARGIN_S)["pid"]
        try:
            answer = self._receive("returncode", wall_s + _ZYGOTE_MARGIN_S)
        except BaseException:
            _kill_group(child)
            raise
        self.in_doubt = False
        return None if answer.get("timed_out") else answer["returncode"]

    def close(self) -> None:
        process = getattr(self, "process", None)
        if process is not None:
            process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
        for path in (self.home, self.home / ".keras"):
            if path.is_dir():
                os.chmod(path, 0o700)  # the zygote made them read-only
        shutil.rmtree(self.home, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return _read_tail(self.home / LOG_FILE, 2000).decode(errors="replace")
        except OSError:
            return ""

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except OSError as exc:
            raise ZygoteFailed(f"could not send it a load: {exc}") from None

    def _receive(self, key: str, timeout: float) -> dict[str, Any]:
        """The next line from the zygote, which must be a JSON object with an int ``key``."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise ZygoteFailed(f"no {key!r} within {timeout:g} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise ZygoteFailed(f"it exited ({self.process.poll()}): {self.log_tail()}")
            self._buffer += chunk
            if len(self._buffer) > _MAX_CONTROL_LINE:
                raise ZygoteFailed("it sent an overlong line")
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict) or type(message.get(key)) not in (int, bool):
            raise ZygoteFailed(f"expected {key!r}, received {line[:100]!r}")
        return message


class _ZygotePool:
    """The zygotes of this process: idle ones are lent to one load at a time."""

    def __init__(self, size: int) -> None:
        self._ready = threading.Condition()
        self._idle: list[_Zygote] = []
        self._live = 0
        self._size = size
        self._paused_until = 0.0
        self._failures = 0  # zygotes that failed in a row

    def acquire(self) -> _Zygote | None:
        """An idle zygote, a new one if there is room, or None (the caller spawns instead)."""
        with self._ready:
            deadline = time.monotonic() + _ZYGOTE_BUSY_WAIT_S
            while not self._idle and (
                self._live >= self._size or time.monotonic() < self._paused_until
            ):
                remaining = deadline - time.monotonic()
                if self._live == 0 or remaining <= 0:
                    return None
                self._ready.wait(remaining)
            if self._idle:
                return self._idle.pop()
            self._live += 1
        try:
            return _Zygote()
        except (ZygoteFailed, OSError) as exc:
            logger.warning("model sandbox zygote did not start (%s); spawning instead", exc)
            with self._ready:
                self._live -= 1
                self._paused_until = time.monotonic() + _ZYGOTE_RETRY_S
                self._ready.notify_all()
            return None
        except BaseException:
            with self._ready:
                self._live -= 1
                self._ready.notify_all()
            raise

    def release(self, zygote: _Zygote) -> None:
        if zygote.in_doubt:
            self.discard(zygote)
            return
        with self._ready:
            self._failures = 0
            self._idle.append(zygote)
            self._ready.notify()

    def discard(self, zygote: _Zygote) -> None:
        zygote.close()
        with self._ready:
            self._live -= 1
            self._failures += 1
            # One failure may be a child that killed its zygote; two in a row, a platform where
            # zygotes do not work (each would cost a start on top of the spawn).
            if self._failures >= 2:
                self._paused_until = time.monotonic() + _ZYGOTE_RETRY_S
            self._ready.notify()

    def abandon(self) -> None:
        """In a forked copy of this process: drop the copies of the pipes, leave the zygotes
        to the process that started them (they exit when it does)."""
        for zygote in self._idle:
            for pipe in (zygote.process.stdin, zygote.process.stdout):
                if pipe is not None:
                    pipe.close()
        self._idle.clear()


_pool = _ZygotePool(_MAX_ZYGOTES)


def _after_fork_in_child() -> None:
    # A forked server (a Celery pool process, say) must not share its parent's zygotes: two
    # processes writing to one pipe would mix their loads. It starts its own on first use.
    global _pool
    _pool.abandon()
    _pool = _ZygotePool(_MAX_ZYGOTES)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _well_formed(metadata: dict[str, Any]) -> bool:
    """Whether the child's metadata has the shape `model_metadata` gives, within sane sizes.

    The registry stores it and serves it back, so a child the model subverted must not be able
    to plant arbitrary data there.
    """

    def tensors(value: Any) -> bool:
        return (
            isinstance(value, list)
            and 0 < len(value) <= 1024
            and all(
                isinstance(t, dict)
                and set(t) == {"name", "shape", "dtype"}
                and isinstance(t["name"], str | None)
                and isinstance(t["dtype"], str)
                and len(t["dtype"]) <= 32
                and isinstance(t["shape"], list)
                and len(t["shape"]) <= 16
                and all(d is None or (type(d) is int and d >= 0) for d in t["shape"])
                for t in value
            )
        )

    counts = ("param_count", "layer_count", "spectral_units")
    layers = metadata.get("spectral_layers")
    return (
        isinstance(metadata.get("keras_class"), str)
        and len(metadata["keras_class"]) <= 100
        and tensors(metadata.get("inputs"))
        and tensors(metadata.get("outputs"))
        and isinstance(metadata.get("input_names"), list)
        and all(type(metadata.get(key)) is int and metadata[key] >= 0 for key in counts)
        and isinstance(layers, list)
        and all(
            isinstance(item, dict)
            and set(item) == {"name", "units"}
            and isinstance(item["name"], str)
            and type(item["units"]) is int
            for item in layers
        )
    )


def _read_head(path: Path, size: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def _read_tail(path: Path, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
        return handle.read(size)


def _kill_group(pid: int) -> None:
    # The child leads its own session: killing the group also ends anything it started.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _parse_reply(out: bytes) -> dict[str, Any] | None:
    if not out or len(out) > _MAX_REPLY_BYTES:
        return None
    try:
        reply = json.loads(out.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return reply if isinstance(reply, dict) else None


def _death_reason(returncode: int, request: SandboxRequest, log_tail: str) -> tuple[str, bool]:
    """Why the child died, and whether that was a resource limit."""
    memory = f"(limit {request.memory_mb} MiB, SPECTRAL_SANDBOX_MEMORY_MB)"
    if returncode == -signal.SIGXCPU:
        return (
            f"Loading the model used more than {request.cpu_s} s of CPU time "
            "(SPECTRAL_SANDBOX_CPU_S); refused",
            True,
        )
    if returncode == -signal.SIGXFSZ:
        return "Loading the model tried to write too much to disk; refused", True
    if returncode == -signal.SIGKILL:
        return (
            f"The model load was killed: it ran out of memory or CPU time {memory}; refused",
            True,
        )
    if any(marker in log_tail for marker in _OUT_OF_MEMORY):
        return f"The model load ran out of memory {memory}; refused", True
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
        return (
            f"The model load crashed ({name or returncode}), likely out of memory {memory}; "
            "refused",
            True,
        )
    return f"The model load failed (exit status {returncode}); refused", False


# -- the child side ---------------------------------------------------------------------------


def _limit(kind: int, soft: int, hard: int | None = None) -> None:
    """Lowers a limit (never raises one the parent already set lower)."""
    import resource

    _, current = resource.getrlimit(kind)
    hard = soft if hard is None else hard
    if current != resource.RLIM_INFINITY:
        hard = min(hard, current)
    resource.setrlimit(kind, (min(soft, hard), hard))


def _apply_limits(request: SandboxRequest) -> None:
    import resource

    _limit(resource.RLIMIT_AS, request.memory_mb * 1024 * 1024)
    # Past the soft limit the kernel sends SIGXCPU; past the hard one, SIGKILL.
    _limit(resource.RLIMIT_CPU, request.cpu_s, request.cpu_s + 2)
    _limit(resource.RLIMIT_NOFILE, OPEN_FILES)
    _limit(resource.RLIMIT_FSIZE, request.file_size_bytes)
    _limit(resource.RLIMIT_CORE, 0)


def _clean_message(exc: BaseException, work_dir: Path) -> str:
    text = str(exc)
    # Keras appends the whole object config to some messages; the client gets the first part.
    for marker in ("Full object config", "config=", "\n"):
        text = text.split(marker, 1)[0]
    text = text.replace(str(work_dir), "<upload>").strip().rstrip(".:")
    return f"{type(exc).__name__}: {text[:300]}"


def _load(work_dir: Path, request: SandboxRequest) -> dict[str, Any]:
    import zipfile

    from service.model_policy import WEIGHTS_ENTRY, check_weights_file

    path = work_dir / MODEL_FILE
    with zipfile.ZipFile(path) as archive:
        if WEIGHTS_ENTRY in archive.namelist():
            with archive.open(WEIGHTS_ENTRY) as weights:
                check_weights_file(weights, request.declared_params)

    # Keras imports scikit-learn (for its wrappers) when it is installed, and copes when it is
    # not: a load needs none of it, and leaving it out saves ~0.7 s of every upload.
    sys.modules["sklearn"] = None  # type: ignore[assignment]
    import keras

    import spectral  # noqa: F401  (registers "spectral>Spectral" with Keras)
    from service.model_loading import model_metadata

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        if isinstance(exc, MemoryError) or any(m in str(exc) for m in _OUT_OF_MEMORY):
            raise
        raise ArtifactRejected(
            f"Keras could not load the model safely: {_clean_message(exc, work_dir)}"
        ) from exc
    try:
        if not model.inputs or not model.outputs:
            raise ArtifactRejected("Model has no defined inputs/outputs (build it before saving)")
        metadata = model_metadata(model)
    except (AttributeError, ValueError) as exc:
        raise ArtifactRejected(
            f"Model has no defined inputs/outputs: {_clean_message(exc, work_dir)}"
        ) from exc
    if metadata["param_count"] > request.max_params:
        raise ArtifactLimitExceeded(
            f"Model has {metadata['param_count']} parameters; the limit is "
            f"{request.max_params} (SPECTRAL_MAX_PARAMS)"
        )
    return metadata


def _serve(work_dir: Path) -> int:
    """The child: limit itself, load the model in ``work_dir``, write one JSON line to fd 1."""
    request = SandboxRequest(**json.loads((work_dir / REQUEST_FILE).read_text()))
    _apply_limits(request)
    # Keep the real stdout for the reply; anything a library prints goes to stderr instead.
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        reply: dict[str, Any] = {"metadata": _load(work_dir, request)}
    except ArtifactRejected as exc:
        reply = {"rejected": exc.message, "limit": isinstance(exc, ArtifactLimitExceeded)}
    except Exception as exc:  # anything else the hostile file provoked is a refusal too
        if isinstance(exc, MemoryError) or any(m in str(exc) for m in _OUT_OF_MEMORY):
            reply = {
                "rejected": f"The model load ran out of memory (limit {request.memory_mb} MiB, "
                "SPECTRAL_SANDBOX_MEMORY_MB); refused",
                "limit": True,
            }
        else:
            reply = {"rejected": f"The model load failed: {_clean_message(exc, work_dir)}"}
    with os.fdopen(reply_fd, "w") as out:
        out.write(json.dumps(reply) + "\n")
    return 0


def main(argv: list[str]) -> int:
    """The spawned child (``<work_dir>``) or the zygote (``--zygote``)."""
    if argv == [ZYGOTE_FLAG]:
        return _zygote_main()
    return _serve(Path(argv[0]))


# -- the zygote -------------------------------------------------------------------------------


def _zygote_main() -> int:
    """Imports what a load needs, then forks one child per request line until stdin closes.

    Requests are ``{"work_dir", "wall_s"}``; answers ``{"pid"}`` when the child is forked and
    ``{"returncode", "timed_out"}`` when it is gone.
    """
    control_in, control_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    # Whatever a library prints goes to the log, never into the answers.
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    _preload()
    # Nothing the zygote reads lives here any more: children cannot leave files for it.
    home = Path.cwd()
    for path in (home / ".keras", home):
        if path.is_dir():
            os.chmod(path, 0o500)
    _answer(control_out, {"ready": True})
    pending = b""
    while True:
        while b"\n" not in pending:
            chunk = os.read(control_in, 4096)
            if not chunk:
                return 0  # the parent went away
            pending += chunk
        line, pending = pending.split(b"\n", 1)
        order = json.loads(line)
        work_dir, wall_s = str(order["work_dir"]), float(order["wall_s"])
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _forked_child(Path(work_dir))
        _answer(control_out, {"pid": pid})
        outcome = _wait_child(pid, wall_s, control_in)
        if outcome is None:
            return 0  # the parent went away while the child ran; it is killed
        returncode, timed_out = outcome
        _answer(control_out, {"returncode": returncode, "timed_out": timed_out})


def _preload() -> None:
    """Imports Keras (numpy backend) and this package's loader, touching no model."""
    import ctypes  # noqa: F401
    import resource  # noqa: F401
    import zipfile  # noqa: F401

    # Left out of Keras's import, as in `_load`.
    sys.modules["sklearn"] = None  # type: ignore[assignment]
    import h5py  # noqa: F401
    import keras  # noqa: F401

    import spectral  # noqa: F401
    from service import model_loading, model_policy  # noqa: F401


def _answer(fd: int, message: dict[str, Any]) -> None:
    os.write(fd, json.dumps(message).encode() + b"\n")


def _wait_child(pid: int, wall_s: float, control_in: int) -> tuple[int, bool] | None:
    """Waits for the child until ``wall_s``; kills its process group; reaps it.

    Returns its exit status (Popen's convention) and whether it ran out of time, or None if the
    parent closed the control pipe meanwhile.
    """
    child_fd = os.pidfd_open(pid)
    deadline = time.monotonic() + wall_s
    timed_out = parent_gone = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready = select.select([child_fd, control_in], [], [], remaining)[0]
            if control_in in ready:
                # One load at a time: anything on the pipe now, EOF included, ends the zygote.
                parent_gone = True
                break
            if child_fd in ready:
                break
    finally:
        os.close(child_fd)
        # Until it is reaped the child's pid cannot be reused, so its group is still its own.
        _kill_group(pid)
        _, status = os.waitpid(pid, 0)
    if parent_gone:
        return None
    return os.waitstatus_to_exitcode(status), timed_out


def _forked_child(work_dir: Path) -> None:
    """In the fork: become exactly what a spawned child is, serve one load, and exit."""
    code = 70
    try:
        zygote = os.getppid()
        os.setsid()
        _die_with_parent(zygote)
        devnull = os.open(os.devnull, os.O_RDONLY)
        reply = os.open(work_dir / REPLY_FILE, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        log = os.open(work_dir / LOG_FILE, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        os.dup2(devnull, 0)
        os.dup2(reply, 1)
        os.dup2(log, 2)
        # The control pipe and everything else the zygote holds stay out of the child's reach.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.chdir(work_dir)
        for key in ("HOME", "TMPDIR"):
            os.environ[key] = str(work_dir)
        os.environ["KERAS_HOME"] = str(work_dir / ".keras")
        tempfile.tempdir = str(work_dir)
        code = _serve(work_dir)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _die_with_parent(zygote: int) -> None:
    """Asks the kernel to SIGKILL this process when the zygote dies (a killed zygote cannot
    kill its child on the way out)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != zygote:
        os._exit(70)  # the zygote died before the request took effect


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
