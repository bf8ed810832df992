"""What an uploaded ``.keras`` archive may contain, checked without Keras.

An upload is untrusted until it has passed, in order:

- `read_archive`: a plain zip holding only the entries Keras writes (``config.json``,
  ``metadata.json``, ``model.weights.h5``), with no links, traversal, duplicates or bombs;
- `parse_config_json`: JSON of bounded size, depth and number length, so no RecursionError or
  digit-limit ValueError can escape the parser;
- `check_config`: every serialized object in the config tree, by exact module and class, is one
  a dense network needs. Keras deserializes anything a config names (operation nodes, functions,
  ``TFSMLayer``, lookup layers that read files), so anything not on the list is refused;
- `declared_param_count`: the parameters the config's shapes imply, bounded before any load;
- `check_weights_file`: the HDF5 weights hold no links, external storage or virtual datasets,
  and no dataset declares more elements than the config implies. It parses hostile binary HDF5,
  so it runs inside the load sandbox (`service.model_sandbox`), never in the API process.

Nothing here imports Keras or constructs Keras objects; the API process runs all but the last.
"""

from __future__ import annotations

import io
import json
import re
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from service.errors import ArtifactLimitExceeded, ArtifactRejected

MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_METADATA_BYTES = 64 * 1024
MAX_CONFIG_DEPTH = 100
# Keras writes floats with ~17 significant digits and ints far shorter; 100 leaves room for
# exponents and long float reprs while keeping int() far from Python's 4300-digit limit.
MAX_NUMBER_CHARS = 100
MAX_COMPRESSION_RATIO = 100
MAX_WEIGHT_DATASETS = 10_000
# The weights file also holds optimizer slots (Adam: two per weight), seed-generator states and
# step counters, so its total may exceed the model's parameters by a bounded factor.
WEIGHTS_PER_PARAM = 4
WEIGHTS_SLACK = 4096
LEGACY_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
KERAS_ENTRIES = ("config.json", "metadata.json", "model.weights.h5")
WEIGHTS_ENTRY = "model.weights.h5"

# -- the allow-list ---------------------------------------------------------------------------

# Layers the pruning rules support (spectral/rules), plus the model containers.
_LAYERS = frozenset(
    {
        "InputLayer",
        "Dense",
        "Activation",
        "Dropout",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "ReLU",
        "LeakyReLU",
        "ELU",
        "Softmax",
        "Identity",
        "Add",
        "Subtract",
        "Multiply",
        "Average",
        "Maximum",
        "Minimum",
        "Concatenate",
        "BatchNormalization",
        "LayerNormalization",
    }
)
_MODELS = frozenset(
    {
        ("keras", "Sequential"),
        ("keras", "Functional"),
        ("keras.src.models.functional", "Functional"),
    }
)
_SPECTRAL = ("spectral.layer", "Spectral", "spectral>Spectral")
_LAYER_CLASSES = frozenset({("keras.layers", name) for name in _LAYERS} | {_SPECTRAL[:2]})

_ATTRIBUTE_CLASSES = frozenset(
    {("keras", "DTypePolicy"), ("keras", "FloatDTypePolicy")}
    | {
        ("keras.initializers", name)
        for name in (
            "Zeros",
            "Ones",
            "Constant",
            "RandomNormal",
            "RandomUniform",
            "TruncatedNormal",
            "GlorotUniform",
            "GlorotNormal",
            "HeUniform",
            "HeNormal",
            "LecunUniform",
            "LecunNormal",
            "Orthogonal",
            "VarianceScaling",
        )
    }
    | {("keras.regularizers", name) for name in ("L1", "L2", "L1L2", "OrthogonalRegularizer")}
    | {("keras.constraints", name) for name in ("MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm")}
)
# compile_config is not deserialized by the upload check (compile=False), but jobs compile with
# it later, so it is held to the same standard.
_COMPILE_CLASSES = frozenset(
    {
        ("keras.optimizers", name)
        for name in (
            "Adam",
            "AdamW",
            "Adamax",
            "Nadam",
            "SGD",
            "RMSprop",
            "Adagrad",
            "Adadelta",
            "Ftrl",
            "Lion",
            "Lamb",
        )
    }
    | {
        ("keras.optimizers.schedules", name)
        for name in (
            "ExponentialDecay",
            "PiecewiseConstantDecay",
            "PolynomialDecay",
            "InverseTimeDecay",
            "CosineDecay",
            "CosineDecayRestarts",
        )
    }
    | {
        ("keras.losses", name)
        for name in (
            "SparseCategoricalCrossentropy",
            "CategoricalCrossentropy",
            "BinaryCrossentropy",
            "MeanSquaredError",
            "MeanAbsoluteError",
            "Huber",
            "KLDivergence",
        )
    }
    | {
        ("keras.metrics", name)
        for name in (
            "Accuracy",
            "SparseCategoricalAccuracy",
            "CategoricalAccuracy",
            "BinaryAccuracy",
            "SparseTopKCategoricalAccuracy",
            "TopKCategoricalAccuracy",
            "MeanSquaredError",
            "MeanAbsoluteError",
            "RootMeanSquaredError",
        )
    }
    | {("keras", "DTypePolicy"), ("keras", "FloatDTypePolicy")}
)
# Markers Keras writes for plain values inside inbound nodes and shapes. `__tensor__` and
# `__numpy__` (arrays built from the config) are not needed by a dense network.
_VALUE_MARKERS = frozenset({"__keras_tensor__", "__tuple__"})
# Strings Keras resolves to objects by name (activation="relu", loss="mse"): a plain snake-case
# name can only hit Keras's own tables; a dotted path or a registered "package>Name" could reach
# other code, so neither is accepted.
_OBJECT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_NAMED_OBJECT_KEYS = re.compile(r"(^|_)(activation|initializer|regularizer|constraint|dtype)$")
_NAMED_COMPILE_KEYS = frozenset({"optimizer", "loss", "metrics", "weighted_metrics"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


# -- archive ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """The checked entries of a ``.keras`` zip: its config bytes and its weights entry size."""

    config_json: bytes
    weights_size: int | None


def read_archive(data: bytes, *, max_uncompressed: int) -> Archive:
    """Checks a ``.keras`` zip's directory and returns its ``config.json`` bytes.

    Nothing is extracted: only ``config.json`` is read, after every entry has been checked.

    Raises:
        ArtifactRejected: not a zip (or a legacy HDF5 model); entries other than the ones Keras
            writes; links, directories, traversal or duplicate names; encrypted or oddly
            compressed entries; more than ``max_uncompressed`` bytes in all, or an entry that
            expands more than `MAX_COMPRESSION_RATIO` times.
    """
    if data.startswith(LEGACY_HDF5_SIGNATURE):
        raise ArtifactRejected(
            "Upload is a legacy HDF5 (.h5) whole-model file; only .keras archives are accepted. "
            "Re-save it with model.save('model.keras')"
        )
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ArtifactRejected("Upload is not a .keras archive (not a zip file)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            _check_entries(infos, max_uncompressed)
            names = {info.filename for info in infos}
            if "config.json" not in names:
                raise ArtifactRejected("Upload is not a .keras archive (no config.json inside)")
            raw = archive.read("config.json")
            weights = next((i.file_size for i in infos if i.filename == WEIGHTS_ENTRY), None)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise ArtifactRejected(
            f"Upload is an invalid or truncated .keras archive ({type(exc).__name__})"
        ) from exc
    return Archive(config_json=raw, weights_size=weights)


def _check_entries(infos: list[zipfile.ZipInfo], max_uncompressed: int) -> None:
    seen: set[str] = set()
    total = 0
    for index, info in enumerate(infos):
        name = info.filename
        shown = ascii(name[:80])
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
            # Not echoed: the name is a path the client chose, possibly one on this server.
            raise ArtifactRejected(
                f"Archive entry {index} has an absolute or '..' path: it escapes the archive"
            )
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode) or info.is_dir():
            raise ArtifactRejected(f"Archive entry {shown} is a link or a directory")
        if name in seen:
            raise ArtifactRejected(f"Archive holds {shown} twice")
        seen.add(name)
        if name not in KERAS_ENTRIES:
            raise ArtifactRejected(
                f"Archive entry {shown} is not one Keras writes (expected only "
                f"{', '.join(KERAS_ENTRIES)})"
            )
        if info.flag_bits & 0x1:
            raise ArtifactRejected(f"Archive entry {shown} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArtifactRejected(f"Archive entry {shown} uses an unsupported compression")
        if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1) + 4096:
            raise ArtifactLimitExceeded(
                f"Archive entry {shown} expands {info.file_size} bytes from "
                f"{info.compress_size}: more than {MAX_COMPRESSION_RATIO} times (a zip bomb?)"
            )
        limit = {"config.json": MAX_CONFIG_BYTES, "metadata.json": MAX_METADATA_BYTES}
        if info.file_size > limit.get(name, max_uncompressed):
            raise ArtifactLimitExceeded(
                f"Archive entry {shown} is {info.file_size} bytes uncompressed; the limit is "
                f"{limit.get(name, max_uncompressed)}"
            )
        total += info.file_size
    if total > max_uncompressed:
        raise ArtifactLimitExceeded(
            f"Archive expands to {total} bytes; the limit is {max_uncompressed} bytes"
        )


# -- config JSON ------------------------------------------------------------------------------


def _bounded_number(kind: type) -> Any:
    def parse(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise ArtifactRejected(
                f"config.json holds a number of {len(text)} characters; at most "
                f"{MAX_NUMBER_CHARS} are accepted"
            )
        return kind(text)

    return parse


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text``, found without recursion."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_config_json(raw: bytes) -> dict[str, Any]:
    """Parses ``config.json`` with bounds on its size, nesting depth and number lengths.

    Raises:
        ArtifactRejected: too large, too deep, a number too long, not JSON, or not an object.
    """
    if len(raw) > MAX_CONFIG_BYTES:
        raise ArtifactRejected(
            f"config.json is {len(raw)} bytes; at most {MAX_CONFIG_BYTES} are accepted"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactRejected("config.json is not UTF-8 text") from exc
    depth = json_depth(text)
    if depth > MAX_CONFIG_DEPTH:
        raise ArtifactRejected(
            f"config.json nests {depth} levels deep; at most {MAX_CONFIG_DEPTH} are accepted"
        )
    try:
        config = json.loads(
            text, parse_int=_bounded_number(int), parse_float=_bounded_number(float)
        )
    except json.JSONDecodeError as exc:
        raise ArtifactRejected(
            f"config.json is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from exc
    if not isinstance(config, dict):
        raise ArtifactRejected("config.json does not describe a model (expected a JSON object)")
    return config


# -- the config walk --------------------------------------------------------------------------


def _describe(obj: dict[str, Any]) -> str:
    return f"class {str(obj.get('class_name'))[:80]!r} from module {str(obj.get('module'))[:80]!r}"


def _refuse(obj: dict[str, Any], where: str, why: str) -> ArtifactRejected:
    return ArtifactRejected(f"Model config refused at {where}: {_describe(obj)} {why}")


def check_config(config: Any) -> None:
    """Checks a parsed ``config.json`` against the allow-list, walking every object in it.

    The top object must be a Sequential or Functional model; the entries of every model's
    ``layers`` (nested models included) must be supported layers or models; their attributes
    may hold only initializers, regularizers, constraints and dtype policies; their inbound
    nodes and build configs only ``__keras_tensor__`` references and plain values.

    Raises:
        ArtifactRejected: naming the first refused path in the config and its class.
    """
    if not isinstance(config, dict):
        raise ArtifactRejected("Model config is not a JSON object")
    _check_model(config, "config")


def _check_object_identity(obj: dict[str, Any], where: str, allowed: frozenset[Any]) -> None:
    class_name, module = obj.get("class_name"), obj.get("module")
    if not isinstance(class_name, str):
        raise ArtifactRejected(f"Model config has a malformed object at {where} (no class name)")
    if class_name in _VALUE_MARKERS and module is None and allowed is _VALUE_MARKERS:
        return
    if class_name == "__lambda__" or class_name == "function" or "Lambda" in class_name:
        raise _refuse(obj, where, "is code, which is never accepted")
    if (module, class_name) not in allowed:
        raise _refuse(obj, where, "is not on the list of accepted classes here")
    registered = obj.get("registered_name")
    if (module, class_name) == _SPECTRAL[:2]:
        if registered != _SPECTRAL[2]:
            raise _refuse(obj, where, "has a registered name other than 'spectral>Spectral'")
    elif registered not in (None, class_name):
        raise _refuse(obj, where, f"is registered as {str(registered)[:80]!r} (a custom class)")


def _check_model(obj: Any, where: str) -> None:
    if not isinstance(obj, dict):
        raise ArtifactRejected(f"Model config at {where} is not an object")
    _check_object_identity(obj, where, _MODELS | _LAYER_CLASSES)
    if (obj.get("module"), obj.get("class_name")) not in _MODELS:
        raise _refuse(obj, where, "is not a Sequential or Functional model")
    _check_layer_like(obj, where)


def _check_layer(obj: Any, where: str) -> None:
    if not isinstance(obj, dict):
        raise ArtifactRejected(f"Model config at {where} is not a layer object")
    _check_object_identity(obj, where, _MODELS | _LAYER_CLASSES)
    _check_layer_like(obj, where)


def _check_layer_like(obj: dict[str, Any], where: str) -> None:
    is_model = (obj.get("module"), obj.get("class_name")) in _MODELS
    for key, value in obj.items():
        path = f"{where}.{key}"
        if key in ("inbound_nodes", "build_config"):
            _walk(value, path, _VALUE_MARKERS)
        elif key == "compile_config":
            _walk(value, path, _COMPILE_CLASSES)
        elif key == "config" and isinstance(value, dict):
            for inner_key, inner in value.items():
                inner_path = f"{path}.{inner_key}"
                if is_model and inner_key == "layers":
                    if not isinstance(inner, list):
                        raise ArtifactRejected(f"Model config at {inner_path} is not a list")
                    for index, layer in enumerate(inner):
                        _check_layer(layer, f"{inner_path}[{index}]")
                elif is_model and inner_key in ("input_layers", "output_layers"):
                    _walk(inner, inner_path, _VALUE_MARKERS)
                else:
                    _walk(inner, inner_path, _ATTRIBUTE_CLASSES, inner_key)
        elif key not in ("module", "class_name", "registered_name", "name"):
            _walk(value, path, _VALUE_MARKERS)
        elif not (value is None or isinstance(value, str)):
            raise ArtifactRejected(f"Model config at {path} is not a string")


def _walk(
    value: Any, where: str, allowed: frozenset[Any], key: str = "", named: bool = False
) -> None:
    """Checks every object under ``value`` against ``allowed`` (depth is bounded by the parse).

    ``named``: strings here are names Keras resolves to objects (a loss, a metric).
    """
    named = named or bool(_NAMED_OBJECT_KEYS.search(key)) or key in _NAMED_COMPILE_KEYS
    if isinstance(value, dict):
        if "class_name" in value:
            _check_object_identity(value, where, allowed)
            named = False
        for inner_key, inner in value.items():
            _walk(inner, f"{where}.{inner_key}", allowed, str(inner_key), named)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            _walk(inner, f"{where}[{index}]", allowed, key, named)
    elif named and isinstance(value, str) and not _OBJECT_NAME.fullmatch(value):
        raise ArtifactRejected(
            f"Model config refused at {where}: {value[:80]!r} is not a built-in Keras name "
            "(expected a lowercase name such as 'relu')"
        )


# -- declared parameters ----------------------------------------------------------------------

_SHAPE_KEYS = frozenset({"batch_shape", "batch_input_shape", "input_shape", "shape"})


def _layers_of(model: dict[str, Any]) -> list[Any]:
    config = model.get("config")
    layers = config.get("layers") if isinstance(config, dict) else None
    return layers if isinstance(layers, list) else []


def _ints(value: Any) -> Iterator[int]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, list | dict):
        for inner in value.values() if isinstance(value, dict) else value:
            yield from _ints(inner)


def _declared_dims(value: Any, key: str = "") -> Iterator[int]:
    if isinstance(value, dict):
        for inner_key, inner in value.items():
            if inner_key in _SHAPE_KEYS:
                yield from _ints(inner)
            elif inner_key == "units":
                yield from _ints(inner)
            else:
                yield from _declared_dims(inner, str(inner_key))
    elif isinstance(value, list):
        for inner in value:
            yield from _declared_dims(inner, key)


def _last_dim(build_config: Any) -> int | None:
    shape = build_config.get("input_shape") if isinstance(build_config, dict) else None
    if (
        isinstance(shape, list)
        and shape
        and all(d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in shape)
    ):
        last = shape[-1]
        return last if isinstance(last, int) and last > 0 else None
    return None


def declared_param_count(config: dict[str, Any]) -> int:
    """An upper bound on the parameters a checked config will create when Keras builds it.

    A layer's input width is its ``build_config`` shape when it declares one, else the widest
    dimension declared anywhere in the config (Keras builds unbuilt layers from the tensors they
    are called on, whose shapes the config also declares).
    """
    widest = max((d for d in _declared_dims(config) if d > 0), default=1)
    return _model_params(config, widest)


def _model_params(model: dict[str, Any], widest: int) -> int:
    total = 0
    for layer in _layers_of(model):
        if not isinstance(layer, dict):
            continue
        if (layer.get("module"), layer.get("class_name")) in _MODELS:
            total += _model_params(layer, widest)
            continue
        raw_config = layer.get("config")
        config: dict[str, Any] = raw_config if isinstance(raw_config, dict) else {}
        width = _last_dim(layer.get("build_config")) or widest
        units = config.get("units")
        units = units if isinstance(units, int) and not isinstance(units, bool) else widest
        units = max(units, 1)
        name = layer.get("class_name")
        if name == "Dense":
            total += width * units + units
        elif name == "Spectral":
            total += width * units + width + 2 * units
        elif name == "BatchNormalization":
            total += 4 * (width if config.get("axis", -1) in (-1, [-1]) else widest)
        elif name == "LayerNormalization":
            total += 2 * widest
    return total


def check_param_count(declared: int, max_params: int) -> None:
    if declared > max_params:
        raise ArtifactLimitExceeded(
            f"Model declares up to {declared} parameters; the limit is {max_params} "
            "(SPECTRAL_MAX_PARAMS)"
        )


# -- HDF5 weights (run inside the sandbox) ----------------------------------------------------

_NUMERIC_KINDS = frozenset("biuf")


def check_weights_file(handle: IO[bytes] | str, declared_params: int) -> None:
    """Walks an HDF5 weights file's structure, reading no data.

    Every link must be a hard link, every dataset numeric, contiguous or chunked in the file
    (no external storage, no virtual dataset), and no larger than ``declared_params`` elements;
    all datasets together at most `WEIGHTS_PER_PARAM` times that, plus `WEIGHTS_SLACK`.

    Raises:
        ArtifactRejected: naming the offending path in the file.
    """
    import h5py

    budget = WEIGHTS_PER_PARAM * declared_params + WEIGHTS_SLACK
    per_dataset = declared_params + WEIGHTS_SLACK
    total = 0
    count = 0
    try:
        with h5py.File(handle, "r") as weights:
            pending: list[tuple[str, Any]] = [("/", weights)]
            while pending:
                path, group = pending.pop()
                for name in group:
                    child_path = f"{path.rstrip('/')}/{name}"[:200]
                    link = group.get(name, getlink=True)
                    if not isinstance(link, h5py.HardLink):
                        raise ArtifactRejected(
                            f"Weights file has a {type(link).__name__} at {child_path!r}; "
                            "only plain groups and datasets are accepted"
                        )
                    count += 1
                    if count > MAX_WEIGHT_DATASETS:
                        raise ArtifactLimitExceeded(
                            f"Weights file holds more than {MAX_WEIGHT_DATASETS} objects"
                        )
                    item = group[name]
                    if isinstance(item, h5py.Group):
                        pending.append((child_path, item))
                        continue
                    if not isinstance(item, h5py.Dataset):
                        raise ArtifactRejected(f"Weights file has an odd object at {child_path!r}")
                    total += _check_dataset(item, child_path, per_dataset)
                    if total > budget:
                        raise ArtifactLimitExceeded(
                            f"Weights file declares more than {total} values; the config's "
                            f"shapes allow at most {budget}"
                        )
    except ArtifactRejected:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactRejected(
            f"Weights file is not a readable HDF5 file ({type(exc).__name__})"
        ) from exc


def _check_dataset(dataset: Any, path: str, per_dataset: int) -> int:
    import h5py

    if dataset.external or dataset.is_virtual:
        raise ArtifactRejected(f"Weights dataset {path!r} stores its data outside the file")
    layout = dataset.id.get_create_plist().get_layout()
    if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
        raise ArtifactRejected(f"Weights dataset {path!r} has an unsupported storage layout")
    if dataset.dtype.kind not in _NUMERIC_KINDS or dataset.dtype.itemsize > 8:
        raise ArtifactRejected(f"Weights dataset {path!r} is not numeric ({dataset.dtype.str})")
    size = 1
    for dim in dataset.shape or ():
        size *= int(dim)
    if size > per_dataset:
        raise ArtifactLimitExceeded(
            f"Weights dataset {path!r} declares {size} values; the config's shapes allow at "
            f"most {per_dataset}"
        )
    return size
