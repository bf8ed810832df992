"""The hostile corpus (issue 11): each case uploads an attack to ONE real server.

Every case has canaries: a file the attack would create (it must not exist afterwards) and
secrets that must never come back (the API token, a secret file's contents, server paths). Each
refusal must be a 4xx in the error shape; after each case the baseline model still predicts,
and a fresh valid version uploads (through the sandbox) and predicts. A sampler watches the API
process's RSS throughout: it must stay under 1.5 GiB.

Run alone: ``.venv/bin/pytest tests/service/hostile -q``.
"""

from __future__ import annotations

import json
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.hostile.builders import (
    build_zip,
    config_of,
    entries,
    fresh_copy,
    function_ref,
    functional_model_bytes,
    layer,
    symlink_entry,
    with_config,
    with_config_text,
    with_weights,
)
from tests.support.api import RunningApi, launch_api, stop_api
from tests.support.uploads import lambda_model_bytes, upload, upload_version

TOKEN = "hostile-corpus-token-7f3a"
SECRET = "canary-secret-contents-91c2"
RSS_LIMIT_BYTES = int(1.5 * 1024**3)
# High enough that a 1.2e9-parameter Dense passes the static bound and dies in the sandbox.
MAX_PARAMS = 2_000_000_000


@dataclass(frozen=True)
class Canaries:
    """Where a case may try to write, and the secret files it may try to read."""

    root: Path
    written: Path  # must not exist after the case
    secret_text: Path
    secret_h5: Path


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Canaries], bytes]
    message: str  # a fragment of the refusal message
    statuses: tuple[int, ...] = (400,)  # 400: refused content; 422: past a resource limit
    filename: str = "model.keras"


def _base() -> bytes:
    return functional_model_bytes()


def _mutate(mutate: Callable[[dict[str, Any], Canaries], Any]) -> Callable[[Canaries], bytes]:
    return lambda c: with_config(_base(), lambda config: mutate(config, c))


def _head(config: dict[str, Any]) -> dict[str, Any]:
    return layer(config, "head")


def _add_arg(config: dict[str, Any], arg: Any, **kwargs: Any) -> None:
    node = _head(config)["inbound_nodes"][0]
    node["args"].append(arg)
    node["kwargs"].update(kwargs)


def _add_layer(config: dict[str, Any], entry: dict[str, Any]) -> None:
    config["config"]["layers"].append(
        {"registered_name": None, "inbound_nodes": [], "name": "extra", **entry}
    )


def _replace_kernel(weights: Any, make: Callable[[Any, str], Any]) -> None:
    del weights["layers/dense/vars/0"]
    make(weights, "layers/dense/vars/0")


def _legacy_h5(c: Canaries) -> bytes:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = c.root / "legacy.h5"
    model.save(path)
    return path.read_bytes()


def _zip_bomb(c: Canaries) -> bytes:
    parts = entries(_base())
    parts["model.weights.h5"] += bytes(48 * 1024 * 1024)
    return build_zip(list(parts.items()), zipfile.ZIP_DEFLATED)


CASES = [
    # -- code execution through config references -------------------------------------------
    Case(
        "activation-is-os-system",
        _mutate(
            lambda cfg, c: _head(cfg)["config"].update(activation=function_ref("os", "system"))
        ),
        "is code",
    ),
    Case(
        "inbound-arg-calls-get-file",
        _mutate(
            lambda cfg, c: _add_arg(
                cfg,
                function_ref("keras.utils", "get_file"),
                fname=str(c.written),
                origin=f"file://{c.secret_text}",
            )
        ),
        "inbound_nodes[0].args[1]",
    ),
    Case(
        "lambda-layer",
        lambda c: lambda_model_bytes(c.root),
        "is code",
    ),
    Case(
        "user-registered-class",
        _mutate(lambda cfg, c: layer(cfg, "hidden").update(registered_name="evil>Spectral")),
        "spectral>Spectral",
    ),
    # -- constructor calls through operation nodes ------------------------------------------
    Case(
        "operation-node-as-layer",
        _mutate(
            lambda cfg, c: _add_layer(
                cfg, {"module": "keras.src.ops.numpy", "class_name": "Add", "config": {}}
            )
        ),
        "'keras.src.ops.numpy'",
    ),
    Case(
        "layer-constructed-in-node-kwargs",
        _mutate(
            lambda cfg, c: _add_arg(
                cfg,
                None,
                training={
                    "module": "keras.layers",
                    "class_name": "Dense",
                    "config": {"units": 10**6},
                },
            )
        ),
        "inbound_nodes[0].kwargs.training",
    ),
    Case(
        "tfsmlayer-local-path",
        _mutate(
            lambda cfg, c: _add_layer(
                cfg,
                {
                    "module": "keras.layers",
                    "class_name": "TFSMLayer",
                    "config": {"filepath": str(c.written), "call_endpoint": "serve"},
                },
            )
        ),
        "'TFSMLayer'",
    ),
    # -- backend and global-state changes ---------------------------------------------------
    Case(
        "set-backend",
        _mutate(lambda cfg, c: _add_arg(cfg, function_ref("keras.config", "set_backend"))),
        "is code",
    ),
    Case(
        "set-floatx",
        _mutate(
            lambda cfg, c: _head(cfg)["config"].update(
                kernel_initializer=function_ref("keras.config", "set_floatx")
            )
        ),
        "kernel_initializer",
    ),
    Case(
        "enable-unsafe-deserialization",
        _mutate(
            lambda cfg, c: cfg["compile_config"].update(
                loss=function_ref("keras.config", "enable_unsafe_deserialization")
            )
        ),
        "compile_config.loss",
    ),
    # -- file reads through vocabularies and HDF5 links -------------------------------------
    Case(
        "string-lookup-vocabulary-file",
        _mutate(
            lambda cfg, c: _add_layer(
                cfg,
                {
                    "module": "keras.layers",
                    "class_name": "StringLookup",
                    "config": {"vocabulary": str(c.secret_text)},
                },
            )
        ),
        "'StringLookup'",
    ),
    Case(
        "h5-external-link",
        lambda c: with_weights(
            _base(),
            lambda w: w.__setitem__(
                "layers/dense/vars/2", __import__("h5py").ExternalLink(str(c.secret_h5), "/data")
            ),
        ),
        "ExternalLink",
    ),
    Case(
        "h5-soft-link",
        lambda c: with_weights(
            _base(),
            lambda w: _replace_kernel(
                w, lambda f, path: f.__setitem__(path, __import__("h5py").SoftLink("/vars"))
            ),
        ),
        "SoftLink",
    ),
    Case(
        "h5-external-storage",
        lambda c: with_weights(
            _base(),
            lambda w: _replace_kernel(
                w,
                lambda f, path: f.create_dataset(
                    path, (3, 2), "f4", external=[(str(c.secret_text), 0, 24)]
                ),
            ),
        ),
        "outside the file",
    ),
    # -- zip traversal, links and bombs ------------------------------------------------------
    Case(
        "zip-traversal",
        lambda c: build_zip([*entries(_base()).items(), ("../" * 8 + str(c.written), b"x")]),
        "escapes the archive",
    ),
    Case(
        "zip-absolute-path",
        lambda c: build_zip([*entries(_base()).items(), (str(c.written), b"x")]),
        "escapes the archive",
    ),
    Case(
        "zip-symlink",
        lambda c: build_zip(
            [
                *[(n, d) for n, d in entries(_base()).items() if n != "model.weights.h5"],
                symlink_entry("model.weights.h5", str(c.secret_h5)),
            ]
        ),
        "link",
    ),
    Case(
        "zip-duplicate-config",
        lambda c: build_zip([*entries(_base()).items(), ("config.json", b"{}")]),
        "twice",
    ),
    Case(
        "zip-extra-entry",
        lambda c: build_zip([*entries(_base()).items(), ("assets/payload.py", b"import os")]),
        "not one Keras writes",
    ),
    Case("zip-bomb", _zip_bomb, "a zip bomb", statuses=(422,)),
    # -- HDF5 size bombs ----------------------------------------------------------------------
    Case(
        "h5-declared-40-gb",
        lambda c: with_weights(
            _base(),
            lambda w: _replace_kernel(
                w,
                lambda f, path: f.create_dataset(
                    path, (100_000, 100_000), "f4", chunks=(100, 100), compression="gzip"
                ),
            ),
        ),
        "declares 10000000000 values",
        statuses=(422,),
    ),
    # -- parameter-count bombs ---------------------------------------------------------------
    Case(
        "dense-10e10-params",
        _mutate(
            lambda cfg, c: (
                _head(cfg)["config"].update(units=10**6),
                _head(cfg)["build_config"].update(input_shape=[None, 10**4]),
            )
        ),
        "the limit is 2000000000",
        statuses=(422,),
    ),
    Case(
        "dense-4.8-gib-kernel-under-the-limit",
        _mutate(
            lambda cfg, c: (
                _head(cfg)["config"].update(units=40_000),
                _head(cfg)["build_config"].update(input_shape=[None, 30_000]),
            )
        ),
        "out of memory (limit 2048 MiB",
        statuses=(422,),
    ),
    # -- deep and huge JSON --------------------------------------------------------------------
    Case(
        "config-nested-100000-deep",
        lambda c: with_config_text(_base(), b"[" * 100_000 + b"]" * 100_000),
        "nests 100000 levels",
    ),
    Case(
        "config-5000-digit-int",
        lambda c: with_config_text(
            _base(),
            json.dumps(config_of(_base())).replace('"units": 2', '"units": ' + "7" * 5000).encode(),
        ),
        "number of 5000 characters",
    ),
    # -- legacy .h5 ----------------------------------------------------------------------------
    Case("legacy-h5", _legacy_h5, "Expected a .keras file", statuses=(415,), filename="model.h5"),
    Case("legacy-h5-named-keras", _legacy_h5, "Re-save it with model.save('model.keras')"),
]


class RssSampler(threading.Thread):
    """Samples a process's resident memory every 0.2 s until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, 0, threading.Event()

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            try:
                self.peak = max(self.peak, self.rss())
            except (OSError, ValueError):
                return


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    server = launch_api(
        {"SPECTRAL_API_TOKEN": TOKEN, "SPECTRAL_MAX_PARAMS": str(MAX_PARAMS)},
        tmp_path_factory.mktemp("hostile-api"),
    )
    yield server
    stop_api(server)


@pytest.fixture(scope="module")
def sampler(api: RunningApi) -> Iterator[RssSampler]:
    watcher = RssSampler(api.process.pid)
    watcher.start()
    yield watcher
    watcher.stopped.set()


@pytest.fixture(scope="module")
def client(api: RunningApi) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=api, timeout=180, headers=headers) as c:
        yield c


FEATURES = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")


@pytest.fixture(scope="module")
def baseline(client: httpx.Client) -> list[list[float]]:
    """A valid model, uploaded first; returns its predictions on `FEATURES`."""
    response = upload(client, "baseline", functional_model_bytes())
    assert response.status_code == 201, response.text
    return _predict(client, "baseline")


def _predict(client: httpx.Client, model: str) -> list[list[float]]:
    response = client.post(f"/models/{model}/predict", json={"inputs": FEATURES.tolist()})
    assert response.status_code == 200, response.text
    return response.json()["outputs"]  # type: ignore[no-any-return]


@pytest.fixture
def canaries(tmp_path: Path) -> Canaries:
    import h5py

    secret_text = tmp_path / "secret.txt"
    secret_text.write_text(f"{SECRET}\n{SECRET}\n")
    secret_h5 = tmp_path / "secret.h5"
    with h5py.File(secret_h5, "w") as handle:
        handle["data"] = np.frombuffer(SECRET.encode()[:24], dtype="uint8").astype("float32")
    return Canaries(tmp_path, tmp_path / "written.canary", secret_text, secret_h5)


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_upload_is_refused_and_changes_nothing(
    case: Case,
    api: RunningApi,
    client: httpx.Client,
    sampler: RssSampler,
    baseline: list[list[float]],
    canaries: Canaries,
) -> None:
    data = case.build(canaries)
    name = f"hostile-{case.name.replace('.', '-')}"[:100]
    response = upload(client, name, data, filename=case.filename)

    assert response.status_code in case.statuses, response.text
    error = response.json()["error"]
    assert case.message in error["message"]
    for leak in (TOKEN, SECRET, str(canaries.root), str(api.data_dir), "/tmp/", "spectral-sandbox"):
        assert leak not in response.text
    assert len(response.text) < 2000  # never the config
    assert not canaries.written.exists()
    assert not any(canaries.root.parent.glob("**/*.canary"))
    assert client.get(f"/models/{name}").status_code == 404

    assert _predict(client, "baseline") == baseline
    # Fresh bytes each time, so the sandbox really runs (no cached verdict).
    added = upload_version(client, "baseline", fresh_copy(functional_model_bytes()))
    assert added.status_code == 201, added.text
    version = added.json()["version"]
    fresh = client.post(
        f"/models/baseline/versions/{version}/predict", json={"inputs": FEATURES.tolist()}
    )
    assert fresh.status_code == 200, fresh.text
    np.testing.assert_allclose(fresh.json()["outputs"], baseline, rtol=1e-6)
    assert api.process.poll() is None
    assert sampler.peak < RSS_LIMIT_BYTES, f"API RSS peaked at {sampler.peak / 2**20:.0f} MiB"


def test_after_the_corpus_a_valid_model_uploads_and_predicts(
    client: httpx.Client, sampler: RssSampler, baseline: list[list[float]]
) -> None:
    response = upload(client, "after-corpus", fresh_copy(functional_model_bytes()))
    assert response.status_code == 201, response.text
    assert _predict(client, "after-corpus") == baseline
    assert 0 < sampler.peak < RSS_LIMIT_BYTES, f"API RSS peaked at {sampler.peak / 2**20:.0f} MiB"
    print(f"API RSS peak during the corpus: {sampler.peak / 2**20:.0f} MiB")  # for -s runs
