"""The checks an upload passes before Keras sees it: zip entries, bounded JSON, the class
allow-list, declared parameters, and (inside the sandbox) the HDF5 weights' structure."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest

from service.errors import ArtifactRejected
from service.model_policy import (
    check_config,
    check_weights_file,
    declared_param_count,
    json_depth,
    parse_config_json,
    read_archive,
)
from tests.service.hostile.builders import (
    build_zip,
    config_of,
    entries,
    function_ref,
    functional_model_bytes,
    layer,
    symlink_entry,
    with_weights,
)

LIMIT = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def base() -> bytes:
    return functional_model_bytes()


def _weights(data: bytes) -> io.BytesIO:
    return io.BytesIO(entries(data)["model.weights.h5"])


def test_real_archives_pass_every_check(base: bytes, model_bytes: bytes) -> None:
    for data in (base, model_bytes):
        config = parse_config_json(read_archive(data, max_uncompressed=LIMIT).config_json)
        check_config(config)
        declared = declared_param_count(config)
        check_weights_file(_weights(data), declared)
    # Input(4) -> Spectral(3): 4*3 base + 4 + 3 + 3; Dense(2): 3*2 + 2. Exact for built layers.
    assert declared_param_count(config_of(base)) == 4 * 3 + 4 + 2 * 3 + 3 * 2 + 2


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([("../canary", b"x")], "escapes the archive"),
        ([("/tmp/canary", b"x")], "escapes the archive"),
        ([("assets/../../canary", b"x")], "escapes the archive"),
        ([symlink_entry("model.weights.h5", "/etc/passwd")], "link"),
        ([("config.json", b"{}"), ("config.json", b"{}")], "twice"),
        ([("config.json", b"{}"), ("evil.py", b"import os")], "not one Keras writes"),
        ([("metadata.json", b"{}")], "no config.json"),
    ],
)
def test_archive_entries_are_only_the_ones_keras_writes(
    items: list[tuple[Any, bytes]], message: str
) -> None:
    with pytest.raises(ArtifactRejected, match=message):
        read_archive(build_zip(items), max_uncompressed=LIMIT)


def test_zip_bombs_are_refused_from_the_directory(base: bytes) -> None:
    bomb = build_zip(
        [("config.json", b"{}"), ("model.weights.h5", bytes(32 * 1024 * 1024))],
        zipfile.ZIP_DEFLATED,
    )
    assert len(bomb) < 100_000
    with pytest.raises(ArtifactRejected, match="more than 100 times"):
        read_archive(bomb, max_uncompressed=LIMIT)
    with pytest.raises(ArtifactRejected, match="the limit is 1000"):
        read_archive(base, max_uncompressed=1000)


def test_legacy_h5_and_non_zips_get_clear_messages() -> None:
    with pytest.raises(ArtifactRejected, match=r"legacy HDF5.*model\.save\('model\.keras'\)"):
        read_archive(b"\x89HDF\r\n\x1a\n" + bytes(100), max_uncompressed=LIMIT)
    with pytest.raises(ArtifactRejected, match="not a zip"):
        read_archive(b"PK\x03\x04 not really", max_uncompressed=LIMIT)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nests 100000 levels"),
        ('{"a": ' * 5000 + "1" + "}" * 5000, "nests 5000 levels"),
        ('{"units": ' + "9" * 5000 + "}", "number of 5000 characters"),
        ('{"x": 1.' + "5" * 5000 + "}", "number of 5002 characters"),
        ('{"a": [1, 2', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_config_json_is_parsed_with_bounds(text: str, message: str) -> None:
    with pytest.raises(ArtifactRejected, match=message):
        parse_config_json(text.encode())


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth('{"a": "[[[[{{{{", "b": [[1]], "c": "\\"[["}') == 3


def _mutated(base: bytes, mutate: Any) -> dict[str, Any]:
    config = config_of(base)
    mutate(config)
    return config


HOSTILE_CONFIGS = [
    # (mutation, path the message names, what it says)
    (
        lambda c: layer(c, "head")["config"].update(activation=function_ref("os", "system")),
        r"config\.config\.layers\[2\]\.config\.activation",
        "is code",
    ),
    (
        lambda c: layer(c, "head")["inbound_nodes"][0]["args"].append(
            function_ref("keras.config", "set_backend")
        ),
        r"layers\[2\]\.inbound_nodes\[0\]\.args\[1\]",
        "is code",
    ),
    (
        lambda c: layer(c, "head")["inbound_nodes"][0]["kwargs"].update(
            training={"module": "keras.layers", "class_name": "Dense", "config": {"units": 9}}
        ),
        r"inbound_nodes\[0\]\.kwargs\.training",
        "'Dense' from module 'keras.layers' is not on the list",
    ),
    (
        lambda c: c["config"]["layers"].append(
            {"module": "keras.src.ops.numpy", "class_name": "Add", "config": {}, "name": "op"}
        ),
        r"layers\[3\]: class 'Add' from module 'keras.src.ops.numpy'",
        "not on the list",
    ),
    (
        lambda c: c["config"]["layers"].append(
            {"module": "keras.layers", "class_name": "TFSMLayer", "config": {"filepath": "/x"}}
        ),
        r"layers\[3\]: class 'TFSMLayer'",
        "not on the list",
    ),
    (
        lambda c: c["config"]["layers"].append(
            {"module": "keras.layers", "class_name": "StringLookup", "config": {}}
        ),
        "'StringLookup'",
        "not on the list",
    ),
    (
        lambda c: layer(c, "hidden").update(registered_name="evil>Spectral"),
        r"layers\[1\]",
        "other than 'spectral>Spectral'",
    ),
    (
        lambda c: layer(c, "head").update(module="evil.layers"),
        "module 'evil.layers'",
        "not on the list",
    ),
    (
        lambda c: layer(c, "head")["config"].update(activation="keras.src.ops.core>x"),
        r"layers\[2\]\.config\.activation",
        "not a built-in Keras name",
    ),
    (
        lambda c: layer(c, "head")["config"].update(
            quantization_config={"module": "keras.quantizers", "class_name": "Int8", "config": {}}
        ),
        "quantization_config",
        "not on the list",
    ),
    (
        lambda c: c["compile_config"].update(loss=function_ref("keras.utils", "get_file")),
        r"config\.compile_config\.loss",
        "is code",
    ),
    (
        lambda c: c["compile_config"].update(metrics=["keras.src.saving.x"]),
        r"compile_config\.metrics\[0\]",
        "not a built-in Keras name",
    ),
    (
        lambda c: c.update(class_name="Lambda", module="keras.layers"),
        r"^Model config refused at config:",
        "is code",
    ),
    (
        lambda c: layer(c, "head")["build_config"].update(
            input_shape={"class_name": "__numpy__", "config": {"value": [1]}}
        ),
        "build_config.input_shape",
        "'__numpy__'",
    ),
]


@pytest.mark.parametrize(("mutate", "where", "why"), HOSTILE_CONFIGS)
def test_config_walk_names_the_refused_path(base: bytes, mutate: Any, where: str, why: str) -> None:
    with pytest.raises(ArtifactRejected, match=where) as info:
        check_config(_mutated(base, mutate))
    assert why in info.value.message
    # Never the config itself: messages stay short whatever the config holds.
    assert len(info.value.message) < 400


def test_nested_models_are_walked(model_bytes: bytes) -> None:
    outer = config_of(functional_model_bytes())
    inner = config_of(model_bytes)  # a Sequential, nested as a layer of the Functional
    inner["config"]["layers"][1]["config"]["base_initializer"] = function_ref("os", "system")
    outer["config"]["layers"].append(inner)
    with pytest.raises(ArtifactRejected, match=r"layers\[3\]\.config\.layers\[1\]\.config\.base_"):
        check_config(outer)


def test_declared_params_use_build_shapes_else_the_widest_dimension(base: bytes) -> None:
    config = config_of(base)
    layer(config, "head")["config"]["units"] = 10**6
    layer(config, "head")["build_config"]["input_shape"] = [None, 10**4]
    assert declared_param_count(config) > 10**10
    del layer(config, "head")["build_config"]
    # No build shape: the widest declared dimension (units 10**6) stands in for the input width.
    assert declared_param_count(config) >= 10**12


def test_weights_links_and_external_storage_are_refused(base: bytes, tmp_path: Any) -> None:
    import h5py

    canary = tmp_path / "secret.h5"
    with h5py.File(canary, "w") as other:
        other["data"] = [1.0, 2.0]

    def external(w: Any) -> None:
        w["layers/dense/vars/extra"] = h5py.ExternalLink(str(canary), "/data")

    def soft(w: Any) -> None:
        w["layers/dense/vars/extra"] = h5py.SoftLink("/layers/spectral/vars/0")

    def external_storage(w: Any) -> None:
        del w["layers/dense/vars/0"]
        w.create_dataset("layers/dense/vars/0", (3, 2), "f4", external=[(str(canary), 0, 24)])

    for edit, message in [
        (external, "ExternalLink"),
        (soft, "SoftLink"),
        (external_storage, "outside the file"),
    ]:
        with pytest.raises(ArtifactRejected, match=message):
            check_weights_file(_weights(with_weights(base, edit)), 100)


def test_weights_size_bombs_are_refused_without_reading_data(base: bytes) -> None:
    def bomb(w: Any) -> None:
        del w["layers/dense/vars/0"]
        w.create_dataset(
            "layers/dense/vars/0", (100_000, 100_000), "f4", chunks=(100, 100), compression="gzip"
        )

    data = with_weights(base, bomb)
    assert len(data) < 200_000  # 40 GB declared, nothing written
    with pytest.raises(ArtifactRejected, match="declares 10000000000 values"):
        check_weights_file(_weights(data), 40)


def test_weights_that_are_not_hdf5_are_refused() -> None:
    with pytest.raises(ArtifactRejected, match="not a readable HDF5"):
        check_weights_file(io.BytesIO(b"not hdf5" * 100), 100)


def test_config_walk_accepts_every_layer_pruning_supports() -> None:
    import keras

    from spectral import Spectral

    inputs = keras.Input((6,))
    x = Spectral(4, activation="gelu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    y = keras.layers.Dense(4, kernel_regularizer="l2", kernel_constraint="max_norm")(x)
    x = keras.layers.Add()([x, y])
    x = keras.layers.Concatenate()([x, keras.layers.LeakyReLU()(y)])
    x = keras.layers.LayerNormalization()(keras.layers.Dropout(0.1)(x))
    x = keras.layers.Dense(3)(keras.layers.Activation("tanh")(x))
    model = keras.Model(inputs, keras.Sequential([keras.layers.Dense(2)])(x))
    check_config(json.loads(json.dumps(keras.saving.serialize_keras_object(model))))
