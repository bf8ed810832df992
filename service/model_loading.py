"""Safe loading of untrusted .keras uploads, and the metadata the registry keeps for them.

An upload is checked in three steps before anything is stored: it must be a readable zip with a
``config.json`` of bounded size; every serialized object in that config must be a built-in Keras
class or a class registered by the `spectral` package (no ``Lambda``, no lambdas, nothing else);
and Keras must load it with ``safe_mode=True``.

The metadata recorded for a version includes its compile configuration, read from the same
``config.json``, so jobs never open the artifact again to find out how to compile it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import ArtifactRejected

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

# Keys of `model.compile` a job may use; anything else would be an arbitrary kwarg.
COMPILE_KEYS = frozenset({"optimizer", "loss", "metrics", "loss_weights", "weighted_metrics"})
_MAX_CONFIG_BYTES = 16 * 1024 * 1024
_MAX_UNCOMPRESSED_RATIO = 50
_DENIED_CLASSES = frozenset({"Lambda", "__lambda__", "TFSMLayer"})
# Markers Keras writes for plain values; they name no class that could run code.
_VALUE_MARKERS = frozenset(
    {
        "__tuple__",
        "__numpy__",
        "__tensor__",
        "__bytes__",
        "__keras_tensor__",
        "__ellipsis__",
        "__slice__",
    }
)


def _import_keras() -> Any:
    import keras

    import spectral  # noqa: F401  (registers "spectral>" classes with Keras)

    return keras


def _check_object(obj: dict[str, Any], where: str) -> None:
    class_name = obj.get("class_name")
    module = obj.get("module")
    registered = obj.get("registered_name")
    if not isinstance(class_name, str):
        raise ArtifactRejected(f"Model config has a malformed object at {where}")
    if class_name in _DENIED_CLASSES:
        raise ArtifactRejected(
            f"Model config contains {class_name!r} at {where}: arbitrary code is not accepted"
        )
    if isinstance(registered, str) and ">" in registered:
        if registered.startswith("spectral>") and str(module).startswith("spectral"):
            return
        raise ArtifactRejected(
            f"Model config uses custom class {registered!r} at {where}; only built-in Keras "
            "classes and spectral layers are accepted"
        )
    if module is None and class_name in _VALUE_MARKERS:
        return
    if isinstance(module, str) and (module == "keras" or module.startswith("keras.")):
        return
    raise ArtifactRejected(
        f"Model config uses class {class_name!r} from module {module!r} at {where}; only "
        "built-in Keras classes and spectral layers are accepted"
    )


def check_config(config: Any, where: str = "config") -> None:
    """Walks a Keras ``config.json`` tree and rejects anything outside keras/spectral."""
    if isinstance(config, dict):
        if "class_name" in config:
            _check_object(config, where)
        for key, value in config.items():
            check_config(value, f"{where}.{key}")
    elif isinstance(config, list):
        for index, value in enumerate(config):
            check_config(value, f"{where}[{index}]")


def _read_config(data: bytes) -> dict[str, Any]:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ArtifactRejected("Upload is not a .keras archive (not a zip file)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise ArtifactRejected("Upload is not a .keras archive (no config.json inside)")
            total = sum(info.file_size for info in archive.infolist())
            if total > max(len(data), 1) * _MAX_UNCOMPRESSED_RATIO + _MAX_CONFIG_BYTES:
                raise ArtifactRejected("Upload expands to an implausible size; refused")
            if archive.getinfo("config.json").file_size > _MAX_CONFIG_BYTES:
                raise ArtifactRejected("config.json inside the archive is too large")
            bad = archive.testzip()
            if bad is not None:
                raise ArtifactRejected(f"Archive member {bad!r} is corrupt (CRC mismatch)")
            raw = archive.read("config.json")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ArtifactRejected(f"Upload is an invalid or truncated .keras archive: {exc}") from exc
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactRejected(f"config.json is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ArtifactRejected("config.json does not describe a model")
    return config


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
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError):
        return None
    return compile_config(config) if isinstance(config, dict) else None


def model_metadata(model: Any) -> dict[str, Any]:
    """Shapes, dtypes, parameter count and Spectral layers of a loaded Keras model."""
    import spectral

    def describe(tensors: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": getattr(t, "name", None),
                "shape": [None if d is None else int(d) for d in t.shape],
                "dtype": str(t.dtype),
            }
            for t in tensors
        ]

    spectral_layers = [
        {"name": layer.name, "units": int(layer.units)}
        for _, layer in spectral.spectral_layers(model)
    ]
    input_names = [getattr(t, "name", None) for t in model.inputs]
    return {
        "keras_class": type(model).__name__,
        "inputs": describe(model.inputs),
        "outputs": describe(model.outputs),
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
        ArtifactRejected: the bytes are not a safe, loadable .keras model with inputs/outputs.
    """
    config = _read_config(data)
    check_config(config)
    try:
        model = load_model_bytes(data)
    except Exception as exc:
        raise ArtifactRejected(f"Keras could not load the model safely: {exc}") from exc
    try:
        if not model.inputs or not model.outputs:
            raise ArtifactRejected("Model has no defined inputs/outputs (build it before saving)")
        return {**model_metadata(model), "compile_config": compile_config(config)}
    except (AttributeError, ValueError) as exc:
        raise ArtifactRejected(f"Model has no defined inputs/outputs: {exc}") from exc
