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
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
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

    Raises:
        ArtifactRejected: the child refused the model, died (memory, CPU, signal) or ran past
            ``wall_s``; the message says which, with the limit.
    """
    with tempfile.TemporaryDirectory(prefix="spectral-sandbox-") as tmp:
        work_dir = Path(tmp)
        (work_dir / MODEL_FILE).write_bytes(data)
        (work_dir / REQUEST_FILE).write_text(json.dumps(asdict(request)))
        started = time.monotonic()
        # Both streams go to files in the sandbox directory (bounded by the child's file-size
        # limit) and are read back in bounded amounts: a misbehaving child cannot flood this
        # process through a pipe.
        with (
            open(work_dir / REPLY_FILE, "wb") as reply_out,
            open(work_dir / LOG_FILE, "wb") as log_out,
        ):
            process = subprocess.Popen(
                [sys.executable, "-m", "service.model_sandbox", str(work_dir)],
                cwd=work_dir,
                env=sandbox_env(work_dir),
                stdin=subprocess.DEVNULL,
                stdout=reply_out,
                stderr=log_out,
                start_new_session=True,
            )
            try:
                process.wait(timeout=wall_s)
            except subprocess.TimeoutExpired:
                raise ArtifactLimitExceeded(
                    f"Loading the model took longer than {wall_s:g} s (SPECTRAL_SANDBOX_WALL_S); "
                    "refused"
                ) from None
            finally:
                _kill_group(process)
        elapsed = time.monotonic() - started
        out = _read_head(work_dir / REPLY_FILE, _MAX_REPLY_BYTES + 1)
        log_tail = _read_tail(work_dir / LOG_FILE, 4000).decode(errors="replace")
    logger.info("sandboxed model load: exit %s in %.2f s", process.returncode, elapsed)
    reply = _parse_reply(out)
    if reply is None:
        logger.warning("model sandbox died (exit %s): %s", process.returncode, log_tail)
        reason, is_limit = _death_reason(process.returncode, request, log_tail)
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


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # The child leads its own session: killing the group also ends anything it started.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


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


def main(argv: list[str]) -> int:
    """The child: limit itself, load the model in ``argv[0]``, print one JSON line."""
    work_dir = Path(argv[0])
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
