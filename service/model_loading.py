"""Safe loading of untrusted .keras uploads, and the metadata the registry keeps for them.

`inspect_artifact` accepts an upload only after, in order: the zip, JSON and allow-list checks
of `service.model_policy` (in this process: cheap, pure Python, no Keras objects); a bound on the
parameters the config declares; and a first load in a limited, short-lived process
(`service.model_sandbox`) that reports the model's metadata. Only then may the API or a worker
load the artifact in-process, with `load_model_file` / `load_model_bytes`.

The metadata recorded for a version includes its compile configuration, read from the same
``config.json``, so jobs never open the artifact again to find out how to compile it.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import tempfile
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import ArtifactLimitExceeded, ArtifactRejected
from service.model_policy import (
    MAX_CONFIG_BYTES,
    WEIGHTS_PER_PARAM,
    check_config,
    check_param_count,
    declared_param_count,
    parse_config_json,
    read_archive,
)
from service.model_sandbox import SandboxRequest, load_in_sandbox

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

# Keys of `model.compile` a job may use; anything else would be an arbitrary kwarg.
COMPILE_KEYS = frozenset({"optimizer", "loss", "metrics", "loss_weights", "weighted_metrics"})
# HDF5 group and attribute overhead on top of the weight values themselves.
_WEIGHTS_FILE_OVERHEAD = 4 * 1024 * 1024
_SANDBOX_FILE_SLACK = 16 * 1024 * 1024
# Metadata of byte-identical archives that already loaded in the sandbox under the same limits:
# the same bytes load the same way, so re-uploads (one model under several names, retried
# uploads) skip the seconds a fresh sandbox costs. Only successes are kept, in this process.
_VERDICT_CACHE_SIZE = 128
_verdicts: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
_verdicts_lock = threading.Lock()


def _import_keras() -> Any:
    import keras

    import spectral  # noqa: F401  (registers "spectral>" classes with Keras)

    return keras


def compile_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """The ``model.compile`` kwargs in a parsed ``config.json``, or None when uncompiled."""
    saved = config.get("compile_config")
    if not isinstance(saved, dict) or not saved.get("loss"):
        return None
    return {key: saved[key] for key in sorted(COMPILE_KEYS) if key in saved}


def compile_config_from_archive(data: bytes) -> dict[str, Any] | None:
    """`compile_config` of a ``.keras`` archive's bytes (None when unreadable or uncompiled)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            config = parse_config_json(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, ArtifactRejected):
        return None
    return compile_config(config)


def model_metadata(model: Any) -> dict[str, Any]:
    """Shapes, dtypes, parameter count and Spectral layers of a loaded Keras model."""
    import spectral

    def describe(tensors: Any, names: list[str | None] | None = None) -> list[dict[str, Any]]:
        if names is None:
            names = [getattr(t, "name", None) for t in tensors]
        return [
            {
                "name": name,
                "shape": [None if d is None else int(d) for d in t.shape],
                "dtype": str(t.dtype),
            }
            for t, name in zip(tensors, names, strict=True)
        ]

    def produced_by(tensor: Any) -> str | None:
        # Output tensors carry generated names (keras_tensor_5); clients of the V2 and TF
        # Serving metadata see the layer that produces each output instead, as
        # Functional.output_names does (Sequential has no output_names).
        history = getattr(tensor, "_keras_history", None)
        operation = getattr(history, "operation", None)
        return getattr(operation, "name", None) or getattr(tensor, "name", None)

    spectral_layers = [
        {"name": layer.name, "units": int(layer.units)}
        for _, layer in spectral.spectral_layers(model)
    ]
    input_names = [getattr(t, "name", None) for t in model.inputs]
    return {
        "keras_class": type(model).__name__,
        "inputs": describe(model.inputs),
        "outputs": describe(model.outputs, [produced_by(t) for t in model.outputs]),
        "input_names": input_names,
        "param_count": int(model.count_params()),
        "layer_count": len(model.layers),
        "spectral_layers": spectral_layers,
        "spectral_units": int(sum(layer["units"] for layer in spectral_layers)),
    }


def load_model_file(path: Path | str) -> Any:
    """Loads a .keras file with ``safe_mode=True`` (no compile: only inference needed).

    Store files are named by their sha256 without a suffix, and Keras picks its loader by the
    ``.keras`` suffix, so such files are loaded through a temporary copy.
    """
    if str(path).endswith(".keras"):
        keras = _import_keras()
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    return load_model_bytes(Path(path).read_bytes())


def load_model_bytes(data: bytes) -> Any:
    """Loads a .keras model from its bytes (via a temporary file), ``safe_mode=True``."""
    keras = _import_keras()
    fd, tmp = tempfile.mkstemp(suffix=".keras")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return keras.saving.load_model(tmp, compile=False, safe_mode=True)
    finally:
        Path(tmp).unlink(missing_ok=True)


def inspect_artifact(data: bytes, settings: Settings | None = None) -> dict[str, Any]:
    """Validates an uploaded .keras file and returns its metadata.

    ``settings`` carries the limits of the check (None: the defaults).

    Raises:
        ArtifactRejected: the bytes are not a safe, loadable .keras model with inputs/outputs,
            or exceed a limit (the message names it).
    """
    if settings is None:
        from service.settings import Settings

        settings = Settings.model_construct()
    max_uncompressed = 2 * settings.max_upload_bytes + MAX_CONFIG_BYTES
    archive = read_archive(data, max_uncompressed=max_uncompressed)
    config = parse_config_json(archive.config_json)
    check_config(config)
    declared = declared_param_count(config)
    check_param_count(declared, settings.max_params)
    weights_limit = WEIGHTS_PER_PARAM * 8 * declared + _WEIGHTS_FILE_OVERHEAD
    if archive.weights_size is not None and archive.weights_size > weights_limit:
        raise ArtifactLimitExceeded(
            f"model.weights.h5 is {archive.weights_size} bytes; a model of {declared} "
            f"parameters needs at most {weights_limit}"
        )
    request = SandboxRequest(
        memory_mb=settings.sandbox_memory_mb,
        cpu_s=settings.sandbox_cpu_s,
        file_size_bytes=(archive.weights_size or 0) + len(data) + _SANDBOX_FILE_SLACK,
        max_params=settings.max_params,
        declared_params=declared,
    )
    key = (hashlib.sha256(data).hexdigest(), request, settings.sandbox_wall_s)
    with _verdicts_lock:
        cached = _verdicts.get(key)
    if cached is None:
        metadata = load_in_sandbox(data, request, settings.sandbox_wall_s)
        with _verdicts_lock:
            _verdicts[key] = metadata
            while len(_verdicts) > _VERDICT_CACHE_SIZE:
                _verdicts.popitem(last=False)
    else:
        metadata = cached
    param_count = metadata.get("param_count")
    if not isinstance(param_count, int) or param_count > settings.max_params:
        raise ArtifactLimitExceeded(
            f"Model has {param_count} parameters; the limit is {settings.max_params} "
            "(SPECTRAL_MAX_PARAMS)"
        )
    return {**copy.deepcopy(metadata), "compile_config": compile_config(config)}
