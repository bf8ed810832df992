"""Builders of hostile .keras uploads: a real saved model's archive, taken apart and mutated.

Each builder starts from real bytes Keras wrote (`functional_model_bytes`) and changes one
thing, so a refusal is due to that one thing.
"""

from __future__ import annotations

import io
import json
import stat
import tempfile
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any


@cache
def functional_model_bytes() -> bytes:
    """A small valid Functional model (Input(4) -> Spectral(3) -> Dense(2)), compiled."""
    import keras

    from spectral import Spectral

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="features")
    hidden = Spectral(3, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()


def entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def build_zip(
    items: list[tuple[str | zipfile.ZipInfo, bytes]], compression: int = zipfile.ZIP_STORED
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, payload in items:
            archive.writestr(name, payload)
    return buffer.getvalue()


def config_of(data: bytes) -> dict[str, Any]:
    return json.loads(entries(data)["config.json"])  # type: ignore[no-any-return]


def with_config_text(data: bytes, text: bytes) -> bytes:
    parts = entries(data)
    parts["config.json"] = text
    return build_zip(list(parts.items()))


def with_config(data: bytes, mutate: Callable[[dict[str, Any]], Any]) -> bytes:
    """The archive with its config.json changed in place by ``mutate``."""
    config = config_of(data)
    mutate(config)
    return with_config_text(data, json.dumps(config).encode())


def with_weights(data: bytes, edit: Callable[[Any], Any]) -> bytes:
    """The archive with its model.weights.h5 opened read-write and changed by ``edit``."""
    import h5py

    parts = entries(data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.h5"
        path.write_bytes(parts["model.weights.h5"])
        with h5py.File(path, "r+") as weights:
            edit(weights)
        parts["model.weights.h5"] = path.read_bytes()
    return build_zip(list(parts.items()))


def layer(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The layer entry called ``name`` in a Functional config."""
    for entry in config["config"]["layers"]:
        if entry["name"] == name:
            return entry  # type: ignore[no-any-return]
    raise KeyError(name)


def function_ref(module: str, name: str) -> dict[str, Any]:
    """How Keras serializes a reference to a plain function (resolved by import on load)."""
    return {"module": module, "class_name": "function", "config": name, "registered_name": name}


def kernel_path(weights: Any, layer_name: str) -> str:
    """The path of the first dataset under a layer's group in a weights file."""
    found: list[str] = []
    weights.visit(lambda name: found.append(name) if name.endswith("/vars/0") else None)
    return next(p for p in found if f"/{layer_name}/" in f"/{p}")


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so the mode bits below are read as a file type
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def fresh_copy(data: bytes) -> bytes:
    """The same model with a unique metadata.json: other bytes, so no cached verdict applies."""
    import uuid

    parts = entries(data)
    metadata = json.loads(parts["metadata.json"])
    parts["metadata.json"] = json.dumps({**metadata, "nonce": uuid.uuid4().hex}).encode()
    return build_zip(list(parts.items()))
