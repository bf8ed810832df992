"""Serving benchmark: predict through every protocol against the empty endpoint, a naive server
and MLServer, on the same machine in the same run.

Servers (each its own process; client and servers share the machine's cores):

* ``spectral api`` (the real command, one uvicorn process, SQLite registry in a temp dir) with
  two models: ``digits`` (64 -> Spectral(64) -> Spectral(32) -> Dense(10), trained a few epochs
  on sklearn's digits) and ``wide`` (784 -> Spectral(256) -> Dense(10), random weights);
* a naive FastAPI app defined here that calls ``model.predict`` per request;
* MLServer (pinned, installed by this script into ``bench/.venvs/mlserver``) serving the same
  ``digits.keras`` through a 20-line runtime (``bench/mlserver/runtime.py``,
  ``predict_on_batch``), ``parallel_workers=0``, plain and with adaptive batching.

Rows: the empty endpoint ``GET /v2/health/live``; batch-1 predict through native JSON
(``/models/{id}/predict``), V2 JSON and V2 binary (``/v2/models/{name}/infer``) and TF Serving
(``/v1/models/{name}:predict``) at 1 and 32 clients; batch-256 rows/s per format for both
models; the naive server; MLServer's empty endpoint and V2 JSON infer (the very same request
bytes as ours). Each row reports p50/p99 latency, requests/s, rows/s, and the server's CPU time
per request (``/proc/<pid>/stat`` of the server and its children over the measured window).

The load generator: ``--client-processes`` processes, each an asyncio (uvloop) loop driving its
share of the keep-alive connections, one request in flight per connection (closed loop). The
requests are encoded once, before the clock starts, and the client reads each response's status
line and Content-Length body and nothing else, so its cost per request is a few tens of
microseconds (reported as client CPU per request). Every endpoint is first checked with a full
HTTP client (httpx): status 200 and outputs equal to ``model.predict`` of the same rows; one that
does not answer correctly is marked not available instead of measured.

Usage: ``python bench/serving.py [--quick] [--skip-mlserver] [--duration 6]``; ``--help`` lists
the rest. Writes ``bench/results/serving.json`` and ``serving.md`` (``serving_quick.*`` with
``--quick``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel

REPO_ROOT = Path(__file__).resolve().parents[1]
MLSERVER_DIR = REPO_ROOT / "bench" / "mlserver"
MLSERVER_VENV = REPO_ROOT / "bench" / ".venvs" / "mlserver"
# What the MLServer venv gets: the version the table used, TensorFlow so that Keras
# loads the model the same way as the naive server does, and matplotlib, which `spectral`
# imports (the Spectral layer itself comes from the checkout, on PYTHONPATH).
MLSERVER_REQUIREMENTS = [
    "mlserver==1.7.1",
    "tensorflow-cpu==2.21.0",
    "keras==3.15.1",
    "matplotlib>=3.8",
]
BATCH_ROWS = 256
logger = logging.getLogger("bench.serving")


# -- the naive baseline server (runs in its own uvicorn process) ------------------------------


class NaiveBody(BaseModel):
    inputs: list[list[float]]


def naive_app() -> Any:
    """FastAPI app that loads ``NAIVE_MODEL_PATH`` and calls ``model.predict`` per request."""
    import keras
    from fastapi import FastAPI

    import spectral  # noqa: F401  (registers the Spectral layer)

    model = keras.saving.load_model(os.environ["NAIVE_MODEL_PATH"], compile=False)
    app = FastAPI()

    @app.post("/predict")
    def predict(body: NaiveBody) -> dict[str, Any]:
        return {"outputs": model.predict(np.asarray(body.inputs, "float32"), verbose=0).tolist()}

    return app


# -- server processes -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    port: int
    pid: int
    command: str


@contextmanager
def _started(
    command: list[str], port: int, ready_path: str, env: dict[str, str], log_path: Path
) -> Iterator[Callable[[], Server]]:
    """Starts ``command`` in its own process group; yields a function that waits until
    ``ready_path`` answers 200 (so that other work can overlap the start-up)."""
    child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> Server:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not start:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    return Server(url, port, process.pid, " ".join(command))
            except httpx.HTTPError:
                pass
            time.sleep(0.3)

    try:
        yield ready
    finally:
        # The group: MLServer may have started helper processes of its own.
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass


@contextmanager
def _server(
    command: list[str], port: int, ready_path: str, env: dict[str, str], log_path: Path
) -> Iterator[Server]:
    with _started(command, port, ready_path, env, log_path) as ready:
        yield ready()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live descendants (``/proc``), in seconds."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        fields = raw[raw.rindex(")") + 2 :].split()
        # After the command name: state, ppid, ... utime (14th field overall), stime (15th).
        stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    family, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in stats.items():
            if ppid == parent and child not in family:
                family.add(child)
                frontier.append(child)
    ticks = sum(stats[p][1] for p in family if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


# -- the load generator (runs in client processes) --------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Reads one HTTP/1.1 response with a Content-Length body; returns the status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    start = lower.find(b"\r\ncontent-length:")
    if start < 0:
        raise ValueError(f"response without Content-Length: {head[:200]!r}")
    end = lower.index(b"\r\n", start + 2)
    length = int(lower[start + 17 : end])
    if length:
        await reader.readexactly(length)
    return status


async def _drive(
    port: int,
    requests: list[bytes],
    connections: int,
    offset: int,
    start_at: float,
    end_at: float,
) -> dict[str, Any]:
    latencies: list[float] = []
    state: dict[str, Any] = {"errors": 0, "sent": 0}
    kinds: dict[str, int] = {}
    clock = time.monotonic

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        i = offset + index * 7919  # a different request order on each connection
        while True:
            began = clock()
            if began >= end_at:
                break
            writer.write(requests[i % len(requests)])
            i += 1
            kind = ""
            try:
                status = await _read_response(reader)
            except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                status, kind = -1, repr(exc)[:200]
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
            done = clock()
            state["sent"] += 1
            if start_at <= done < end_at:
                if status == 200:
                    latencies.append(done - began)
                else:
                    state["errors"] += 1
                    kind = kind if status == -1 else f"HTTP {status}"
                    kinds[kind] = kinds.get(kind, 0) + 1
        writer.close()

    tasks = [connection(i) for i in range(connections)]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=end_at - clock() + 300)
    return {"latencies": latencies, "error_kinds": kinds, **state}


def client_job(
    port: int,
    requests: list[bytes],
    connections: int,
    offset: int,
    start_at: float,
    end_at: float,
) -> dict[str, Any]:
    """One client process: ``connections`` closed-loop keep-alive connections until ``end_at``.

    Latencies count requests that complete inside ``[start_at, end_at)`` (``time.monotonic`` is
    one clock for every process on Linux); the ones before are the warm-up.
    """
    cpu, started = time.process_time(), time.monotonic()
    try:
        import uvloop

        result = uvloop.run(_drive(port, requests, connections, offset, start_at, end_at))
    except ImportError:
        result = asyncio.run(_drive(port, requests, connections, offset, start_at, end_at))
    result["cpu_s"] = time.process_time() - cpu
    result["started"] = started
    return result


def _warm_worker() -> int:
    time.sleep(0.5)  # long enough that every submitted call lands in its own process
    return os.getpid()


def warm_pool(pool: ProcessPoolExecutor, workers: int) -> None:
    """Starts every worker process of ``pool`` (spawned on demand otherwise, mid-measurement)."""
    for future in [pool.submit(_warm_worker) for _ in range(workers)]:
        future.result()


# -- requests ---------------------------------------------------------------------------------


def _http(
    method: str, path: str, port: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if method != "GET":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Endpoint:
    """One thing to measure: how to send it, how to read its outputs back for the check."""

    name: str
    method: str
    path: str
    bodies: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    rows: int = 0  # rows per request (0: the empty endpoint)
    batches: list[np.ndarray] = field(default_factory=list)  # the inputs of each body
    decode: Callable[[httpx.Response], np.ndarray] | None = None

    def wire(self, port: int) -> list[bytes]:
        if not self.bodies:
            return [_http(self.method, self.path, port, headers=self.headers)]
        return [_http(self.method, self.path, port, b, self.headers) for b in self.bodies]


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _native(model: str, batches: list[np.ndarray]) -> Endpoint:
    return Endpoint(
        "native JSON",
        "POST",
        f"/models/{model}/predict",
        [_json({"inputs": b.tolist()}) for b in batches],
        {"Content-Type": "application/json"},
        len(batches[0]),
        batches,
        lambda r: np.asarray(r.json()["outputs"], "float32"),
    )


def _v2_outputs(response: httpx.Response) -> np.ndarray:
    out = response.json()["outputs"][0]
    return np.asarray(out["data"], "float32").reshape(out["shape"])


def _v2_json(model: str, batches: list[np.ndarray], input_name: str, name: str) -> Endpoint:
    def body(b: np.ndarray) -> bytes:
        tensor = {"name": input_name, "shape": list(b.shape), "datatype": "FP32"}
        return _json({"inputs": [{**tensor, "data": b.reshape(-1).tolist()}]})

    return Endpoint(
        name,
        "POST",
        f"/v2/models/{model}/infer",
        [body(b) for b in batches],
        {"Content-Type": "application/json"},
        len(batches[0]),
        batches,
        _v2_outputs,
    )


def _v2_binary_outputs(response: httpx.Response) -> np.ndarray:
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:header_length])
    out = header["outputs"][0]
    size = out["parameters"]["binary_data_size"]
    data = response.content[header_length : header_length + size]
    return np.frombuffer(data, "<f4").reshape(out["shape"])


def _v2_binary(
    model: str, batches: list[np.ndarray], input_name: str, output_name: str
) -> Endpoint:
    def body(b: np.ndarray) -> tuple[bytes, int]:
        raw = b.astype("<f4").tobytes()
        tensor = {"name": input_name, "shape": list(b.shape), "datatype": "FP32"}
        header = _json(
            {
                "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
            }
        )
        return header + raw, len(header)

    encoded = [body(b) for b in batches]
    endpoint = Endpoint(
        "V2 binary",
        "POST",
        f"/v2/models/{model}/infer",
        [e[0] for e in encoded],
        {"Content-Type": "application/octet-stream"},
        len(batches[0]),
        batches,
        _v2_binary_outputs,
    )
    # Each body's JSON header has the same length (same shape, same names).
    endpoint.headers["Inference-Header-Content-Length"] = str(encoded[0][1])
    return endpoint


def _tf_serving(model: str, batches: list[np.ndarray]) -> Endpoint:
    return Endpoint(
        "TF Serving",
        "POST",
        f"/v1/models/{model}:predict",
        [_json({"instances": b.tolist()}) for b in batches],
        {"Content-Type": "application/json"},
        len(batches[0]),
        batches,
        lambda r: np.asarray(r.json()["predictions"], "float32"),
    )


def _naive(batches: list[np.ndarray]) -> Endpoint:
    endpoint = _native("", batches)
    endpoint.name, endpoint.path = "naive predict", "/predict"
    return endpoint


def _empty(name: str = "empty endpoint") -> Endpoint:
    return Endpoint(name, "GET", "/v2/health/live")


def _check(server: Server, endpoint: Endpoint, model: Any) -> str | None:
    """None when the endpoint answers 200 with ``model.predict``'s outputs; else why not."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for i, body in enumerate(endpoint.bodies[:2] or [b""]):
            response = client.request(
                endpoint.method, endpoint.path, content=body or None, headers=endpoint.headers
            )
            if response.status_code != 200:
                return f"HTTP {response.status_code}: {response.text[:200]}"
            if endpoint.decode is None:
                continue
            try:
                got = endpoint.decode(response)
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                return f"unreadable response ({exc!r}): {response.content[:200]!r}"
            expected = np.asarray(model.predict_on_batch(endpoint.batches[i]))
            if got.shape != expected.shape or not np.allclose(got, expected, 1e-4, 1e-5):
                return f"outputs differ from model.predict (shape {got.shape})"
    return None


# -- measurement ------------------------------------------------------------------------------


@dataclass
class LoadPlan:
    pool: ProcessPoolExecutor
    processes: int
    warmup_s: float
    duration_s: float


def _measure(
    plan: LoadPlan,
    server: Server,
    endpoint: Endpoint,
    clients: int,
    processes: int | None = None,
) -> dict[str, Any]:
    count = min(processes or plan.processes, clients)
    shares = [clients // count + (i < clients % count) for i in range(count)]
    wire = endpoint.wire(server.port)
    start_at = time.monotonic() + 0.3 + plan.warmup_s
    end_at = start_at + plan.duration_s
    futures = [
        plan.pool.submit(client_job, server.port, wire, share, 1000 * i, start_at, end_at)
        for i, share in enumerate(shares)
    ]
    time.sleep(max(0.0, start_at - time.monotonic()))
    cpu_start = _cpu_seconds(server.pid)
    time.sleep(max(0.0, end_at - time.monotonic()))
    cpu_end = _cpu_seconds(server.pid)
    parts = [f.result(timeout=plan.duration_s + 400) for f in futures]
    if max(p["started"] for p in parts) > start_at - 0.1 * plan.warmup_s:
        # The window would have measured fewer clients than asked for (a cold process pool).
        raise RuntimeError("a client process started after the warm-up: warm the pool first")
    latencies = np.asarray([x for p in parts for x in p["latencies"]]) * 1000
    done = len(latencies)
    errors = sum(p["errors"] for p in parts)
    kinds: dict[str, int] = {}
    for part in parts:
        for kind, count in part["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    sent = sum(p["sent"] for p in parts)
    row: dict[str, Any] = {
        "endpoint": endpoint.name,
        "path": endpoint.path,
        "clients": clients,
        "client_processes": count,
        "batch": endpoint.rows,
        "requests": done,
        "errors": errors,
        "error_kinds": kinds,
        "p50_ms": float(np.percentile(latencies, 50)) if done else None,
        "p99_ms": float(np.percentile(latencies, 99)) if done else None,
        "throughput_rps": done / plan.duration_s,
        "rows_per_s": done * endpoint.rows / plan.duration_s,
        "server_cpu_ms_per_request": (cpu_end - cpu_start) * 1000 / done if done else None,
        "server_cpu_utilization": (cpu_end - cpu_start) / plan.duration_s,
        "client_cpu_ms_per_request": sum(p["cpu_s"] for p in parts) * 1000 / max(sent, 1),
    }
    logger.info(
        "%-28s %-22s c=%-3d p50 %s ms p99 %s ms %7.0f req/s cpu %s ms/req, errors %d",
        server.command[:28],
        endpoint.name,
        clients,
        _fmt(row["p50_ms"], 2),
        _fmt(row["p99_ms"], 2),
        row["throughput_rps"],
        _fmt(row["server_cpu_ms_per_request"], 3),
        errors,
    )
    return row


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _unavailable(endpoint: Endpoint, clients: int, reason: str) -> dict[str, Any]:
    logger.warning("%s not available: %s", endpoint.name, reason)
    return {
        "endpoint": endpoint.name,
        "path": endpoint.path,
        "clients": clients,
        "batch": endpoint.rows,
        "not_available": reason,
    }


def _run_rows(
    plan: LoadPlan,
    target: Server,
    endpoints: list[Endpoint],
    concurrency: list[int],
    reference: Any,
    **tags: Any,
) -> list[dict[str, Any]]:
    """Checks each endpoint against ``reference`` (the Keras model), then measures it."""
    rows = []
    for endpoint in endpoints:
        reason = _check(target, endpoint, reference)
        for clients in concurrency:
            if reason is not None:
                rows.append({**tags, **_unavailable(endpoint, clients, reason)})
            else:
                rows.append({**tags, **_measure(plan, target, endpoint, clients)})
    return rows


# -- models -----------------------------------------------------------------------------------


def _train_digits(path: Path, epochs: int) -> tuple[Any, np.ndarray, float]:
    import keras
    from sklearn.datasets import load_digits

    from spectral import Spectral

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            Spectral(64, activation="relu"),
            Spectral(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    model.save(path)
    return model, x, float(history.history["accuracy"][-1])


def _wide_model(path: Path) -> tuple[Any, np.ndarray]:
    """784 -> Spectral(256, relu) -> Dense(10, softmax), random weights; inputs are multiples
    of 1/256 in [0, 1) (exact in float32, so their JSON text is short, as an 8-bit image's)."""
    import keras

    from spectral import Spectral

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            Spectral(256, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.save(path)
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, size=(2 * BATCH_ROWS, 784)) / 256).astype("float32")
    return model, x


def _upload(url: str, name: str, path: Path) -> None:
    with path.open("rb") as handle:
        response = httpx.post(
            url + "/models",
            data={"name": name},
            files={"file": (path.name, handle)},
            timeout=300,
        )
    response.raise_for_status()


def _v2_names(url: str, model: str) -> tuple[str, str]:
    """The model's first input and output names, from V2 metadata (else the native one)."""
    response = httpx.get(f"{url}/v2/models/{model}", timeout=30)
    if response.status_code == 200:
        meta = response.json()
        return meta["inputs"][0]["name"], meta["outputs"][0]["name"]
    meta = httpx.get(f"{url}/models/{model}", timeout=30).json()
    found = json.dumps(meta)
    logger.warning("no V2 metadata for %s (HTTP %s): %s", model, response.status_code, found)
    return "input_0", "output_0"


# -- MLServer ---------------------------------------------------------------------------------


def _mlserver_venv() -> Path:
    """The MLServer executable, installing the pinned venv on first use."""
    executable = MLSERVER_VENV / "bin" / "mlserver"
    marker = MLSERVER_VENV / "requirements.txt"
    wanted = "\n".join(MLSERVER_REQUIREMENTS) + "\n"
    if executable.exists() and marker.exists() and marker.read_text() == wanted:
        return executable
    logger.info("installing %s into %s (a few minutes)", MLSERVER_REQUIREMENTS, MLSERVER_VENV)
    if not (MLSERVER_VENV / "bin" / "python").exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(MLSERVER_VENV)], check=True)
    pip = [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + MLSERVER_REQUIREMENTS, check=True)
    marker.write_text(wanted)
    return executable


@contextmanager
def _mlserver(model_path: Path, batched: bool, tmp: Path) -> Iterator[Server]:
    executable = _mlserver_venv()
    root = tmp / ("mlserver-batched" if batched else "mlserver")
    (root / "digits").mkdir(parents=True)
    port = _free_port()
    settings = json.loads((MLSERVER_DIR / "settings.json").read_text())
    settings.update(http_port=port, grpc_port=_free_port(), metrics_port=_free_port())
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    template = "model-settings-batched.json" if batched else "model-settings.json"
    model_settings = json.loads((MLSERVER_DIR / template).read_text())
    model_settings["parameters"]["uri"] = str(model_path)
    (root / "digits" / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    # runtime.py from bench/mlserver, the Spectral layer from the repository root.
    env = {"PYTHONPATH": f"{MLSERVER_DIR}{os.pathsep}{REPO_ROOT}", "KERAS_BACKEND": "tensorflow"}
    command = [str(executable), "start", str(root)]
    with _server(command, port, "/v2/models/digits/ready", env, root / "mlserver.log") as server:
        server.command = "mlserver" + (" (adaptive batching)" if batched else "")
        yield server


def _mlserver_version() -> str | None:
    python = MLSERVER_VENV / "bin" / "python"
    if not python.exists():
        return None
    return subprocess.run(
        [str(python), "-c", "import mlserver; print(mlserver.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()


# -- report -----------------------------------------------------------------------------------


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()) and "not_available" not in row:
            return row
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _ratio2(row: dict[str, Any] | None, base: dict[str, Any] | None, key: str) -> float | None:
    return _ratio(None if row is None else row[key], None if base is None else base[key])


def _targets(results: dict[str, list[dict[str, Any]]], top: int) -> list[dict[str, Any]]:
    """Each of the issue's targets, per predict endpoint, with its measured ratio."""
    ours = results["service"]
    checks: list[dict[str, Any]] = []

    def add(target: str, endpoint: str, value: float | None, limit: float, above: bool) -> None:
        passed = None if value is None else (value >= limit if above else value <= limit)
        checks.append({"target": target, "endpoint": endpoint, "value": value, "pass": passed})

    empty = [r for r in ours if r["endpoint"].startswith("empty") and not r.get("client_check")]
    empty1 = _row(empty, clients=1)
    empty_top = _row(empty, clients=top)
    naive_top = _row(results["naive"], clients=top)
    ml_top = [r for r in results["mlserver"] if r["clients"] == top and "infer" in r["path"]]
    ml_best = max((r["throughput_rps"] for r in ml_top if "throughput_rps" in r), default=None)
    ml_plain1 = _row(results["mlserver"], server="mlserver", clients=1, endpoint="V2 JSON")
    rps, p50, p99 = "throughput_rps", "p50_ms", "p99_ms"
    for name in ("native JSON", "V2 JSON", "V2 binary", "TF Serving"):
        one = _row(ours, endpoint=name, clients=1, batch=1)
        many = _row(ours, endpoint=name, clients=top, batch=1)
        add("batch-1 p50 at 1 client <= 1.5x empty", name, _ratio2(one, empty1, p50), 1.5, False)
        add(f"req/s at {top} clients >= 0.5x empty", name, _ratio2(many, empty_top, rps), 0.5, True)
        add(f"p99 at {top} clients <= 3x empty", name, _ratio2(many, empty_top, p99), 3.0, False)
        add(f"req/s at {top} clients >= 20x naive", name, _ratio2(many, naive_top, rps), 20, True)
        if results["mlserver"]:
            best = _ratio(None if many is None else many[rps], ml_best)
            add(f"req/s at {top} clients >= 1.5x MLServer's best", name, best, 1.5, True)
            # "Lower than plain MLServer's": a ratio strictly under 1.
            versus = _ratio2(one, ml_plain1, p50)
            add("p50 at 1 client / plain MLServer's < 1", name, versus, 1.0 - 1e-9, False)
    return checks


def summary_tables(payload: dict[str, Any]) -> str:
    """The figures at a glance: batch 1 as ratios to the empty endpoint, batch 256 as rows/s."""
    from bench.bench_output import markdown_table

    results = payload["results"]
    top = max(payload["config"]["concurrency"])
    ours = [r for r in results["service"] if not r.get("client_check")]
    empty = [r for r in ours if r["endpoint"].startswith("empty")]
    empty1, empty_top = _row(empty, clients=1), _row(empty, clients=top)
    naive_top = _row(results["naive"], clients=top)
    ml_infer = [r for r in results["mlserver"] if "infer" in r["path"]]
    ml_best = max((r["throughput_rps"] for r in ml_infer if r["clients"] == top), default=None)
    servers: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = [
        (name, ours, {"endpoint": name, "batch": 1})
        for name in ("native JSON", "V2 JSON", "V2 binary", "TF Serving")
    ]
    servers.insert(0, ("empty endpoint (ours)", empty, {}))
    servers.append(("naive `model.predict`", results["naive"], {}))
    for server in ("mlserver", "mlserver (adaptive batching)"):
        servers.append((f"{server}, V2 JSON", ml_infer, {"server": server}))

    def cell(row: dict[str, Any] | None, key: str, base: dict[str, Any] | None, d: int) -> str:
        if row is None:
            return "n/a"
        ratio = _ratio(row[key], None if base is None else base[key])
        return f"{row[key]:.{d}f} ({_fmt(ratio, 2)}×)"

    body = []
    for label, rows, match in servers:
        one, many = _row(rows, clients=1, **match), _row(rows, clients=top, **match)
        body.append(
            [
                label,
                cell(one, "p50_ms", empty1, 2),
                cell(many, "throughput_rps", empty_top, 0),
                cell(many, "p99_ms", empty_top, 1),
                _fmt(_ratio2(many, naive_top, "throughput_rps"), 1),
                _fmt(_ratio(None if many is None else many["throughput_rps"], ml_best), 2),
                _fmt(None if many is None else many["server_cpu_ms_per_request"], 2),
            ]
        )
    batch1 = markdown_table(
        [
            "batch 1",
            "p50 ms, 1 client (× our empty)",
            f"req/s, {top} clients (× our empty)",
            f"p99 ms, {top} clients (× our empty)",
            "× naive req/s",
            "× MLServer's best req/s",
            f"server CPU ms/req, {top} clients",
        ],
        body,
    )
    batched = [r for r in ours if r.get("batch", 0) > 1 and "rows_per_s" in r]
    formats = ["native JSON", "V2 JSON", "V2 binary", "TF Serving"]
    rows256 = []
    for model in ("digits", "wide"):
        found = {r["endpoint"]: r for r in batched if r["model"] == model}
        binary = found.get("V2 binary")
        cells = []
        for name in formats:
            row = found.get(name)
            if row is None:
                cells.append("n/a")
                continue
            versus = _ratio(binary["rows_per_s"], row["rows_per_s"]) if binary else None
            note = "" if name == "V2 binary" else f" (binary {_fmt(versus, 1)}×)"
            cells.append(f"{row['rows_per_s']:,.0f}{note}")
        width = 64 if model == "digits" else 784
        rows256.append([f"{model}, {BATCH_ROWS} × {width}", *cells])
    batch256 = markdown_table([f"batch {BATCH_ROWS}, rows/s", *formats], rows256)
    return batch1 + "\n" + batch256


def _dirty_note(config: dict[str, Any]) -> str:
    files = config.get("uncommitted_service_files")
    if files is None:
        return "not a git checkout"
    return f"uncommitted in service/: {', '.join(files)}" if files else "service/ committed"


def _markdown(payload: dict[str, Any]) -> str:
    from bench.bench_output import markdown_table

    env, config, results = payload["environment"], payload["config"], payload["results"]

    def table(rows: list[dict[str, Any]], *first: str) -> str:
        header = ["clients", "endpoint", "p50 ms", "p99 ms", "req/s", "rows/s"]
        header += ["server CPU ms/req", "client CPU ms/req", "errors"]
        body = []
        for r in rows:
            cells = [str(r["clients"]), r["endpoint"]]
            cells = [str(r[key]) for key in first] + cells
            if "not_available" in r:
                body.append([*cells, f"not available: {r['not_available'][:80]}"] + [""] * 6)
                continue
            body.append(
                [
                    *cells,
                    _fmt(r["p50_ms"], 2),
                    _fmt(r["p99_ms"], 2),
                    f"{r['throughput_rps']:.0f}",
                    f"{r['rows_per_s']:.0f}",
                    _fmt(r["server_cpu_ms_per_request"], 3),
                    f"{r['client_cpu_ms_per_request']:.3f}",
                    str(r["errors"]),
                ]
            )
        return markdown_table([key.replace("_", " ") for key in first] + header, body)

    main_rows = [
        r for r in results["service"] if r.get("batch") in (0, 1) and not r.get("client_check")
    ]
    batch_rows = [r for r in results["service"] if r.get("batch", 0) > 1]
    check_rows = [r for r in results["service"] + results["mlserver"] if r.get("client_check")]
    ml_rows = [r for r in results["mlserver"] if not r.get("client_check")]
    targets = payload["targets"]
    target_table = markdown_table(
        ["target", "endpoint", "measured", "result"],
        [
            [
                t["target"],
                t["endpoint"],
                _fmt(t["value"], 2),
                {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]],
            ]
            for t in targets
        ],
    )
    parts = [
        "# Serving benchmark\n",
        f"Revision {env['git_revision']} ({_dirty_note(config)}), {env['date_utc']}, "
        f"{env['cpu_count']} CPUs shared by the clients and the servers "
        f"({env['keras_backend']} backend). Each row: "
        f"{config['warmup_s']} s warm-up, then {config['duration_s']} s measured; closed-loop "
        f"keep-alive connections driven by {config['client_processes']} client processes "
        "(asyncio + uvloop, requests encoded beforehand). Absolute numbers are pessimistic "
        "(the client takes CPU from the server); compare ratios.\n",
        f"Server: `{config['service_command']}`, `SPECTRAL_LOG_LEVEL="
        f"{config['service_env'].get('SPECTRAL_LOG_LEVEL')}` (see the INFO section below). "
        "Empty endpoint: `GET /v2/health/live` of the "
        "same server. Batch-1 rows send one digit (64 floats) to the digits model "
        "(64 -> Spectral(64) -> Spectral(32) -> Dense(10)).\n",
        "## Summary\n",
        summary_tables(payload),
        "## Targets\n",
        target_table,
        "## Batch 1, our server\n",
        table(main_rows),
        f"## Batch {BATCH_ROWS}: rows/s per format\n",
        f"`digits` is 256 x 64 floats per request, `wide` 256 x 784 floats (784 -> Spectral(256) "
        f"-> Dense(10), random weights), {config['batch_clients']} clients.\n",
        table(batch_rows, "model"),
        "## Naive server (`model.predict` per request)\n",
        table(results["naive"]),
    ]
    if results["mlserver"]:
        parts += [
            f"## MLServer {payload.get('mlserver_version')}\n",
            "The same `digits.keras` through `bench/mlserver/runtime.py` (`predict_on_batch`), "
            "`parallel_workers=0`, `debug=false`; `adaptive batching`: `max_batch_size=64`, "
            "`max_batch_time=0.002` (our server's defaults are 64 rows, 2 ms). V2 JSON rows "
            "send the very same bytes as to our server.\n",
            table(ml_rows, "server"),
        ]
    else:
        parts.append("MLServer: skipped (`--skip-mlserver`).\n")
    if results.get("service_info_logging"):
        parts += [
            "## Our server at the default log level (INFO)\n",
            "The rows above run `spectral api` with `SPECTRAL_LOG_LEVEL="
            f"{config['service_env'].get('SPECTRAL_LOG_LEVEL')}`. At the default, INFO, every "
            "request also writes a plain-text access-log line (uvicorn's, through the "
            "standard library):\n",
            table(results["service_info_logging"]),
        ]
    if check_rows:
        parts += [
            "## Client check\n",
            "The empty endpoint at the top concurrency with 1, 2 and 4 client processes (ours, "
            "and MLServer's, the fastest at hand): if more processes gave more req/s, fewer "
            "were the limit. `client CPU ms/req` is the load generator's own cost.\n",
            table(check_rows, "server", "client_processes"),
        ]
    return "\n".join(parts)


# -- main -------------------------------------------------------------------------------------


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: seconds, no MLServer")
    parser.add_argument("--skip-mlserver", action="store_true", help="no MLServer rows")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None)
    parser.add_argument("--duration", type=float, default=None, help="measured s per row")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up s per row")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--service-log-level",
        default="WARNING",
        help="SPECTRAL_LOG_LEVEL of our server (at INFO it logs every request; full runs also "
        "measure that in a section of their own)",
    )
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    quick = args.quick
    args.concurrency = args.concurrency or ([1, 4] if quick else [1, 32])
    args.duration = args.duration or (0.3 if quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.1 if quick else 2.0)
    args.epochs = args.epochs or (1 if quick else 5)
    args.skip_mlserver = args.skip_mlserver or quick
    if quick:
        args.batch_clients = min(args.batch_clients, 2)
    return args


def _client_check(
    plan: LoadPlan, server: Server, empty: Endpoint, clients: int
) -> list[dict[str, Any]]:
    """The empty endpoint with 1, 2 and 4 client processes: a client that limits shows as more
    req/s with more processes."""
    rows = []
    for processes in (1, 2, 4):
        row = _measure(plan, server, empty, clients, processes)
        rows.append({**row, "client_check": True})
    return rows


def _service_rows(
    plan: LoadPlan,
    server: Server,
    args: argparse.Namespace,
    digits: Any,
    wide: Any,
    singles: list[np.ndarray],
    digit_batches: list[np.ndarray],
    wide_batches: list[np.ndarray],
) -> list[dict[str, Any]]:
    """Our server: batch 1 per protocol and the empty endpoint, batch 256 per format and model,
    and (full runs) the client check."""
    in_name, out_name = _v2_names(server.url, "digits")
    empty = _empty()
    if _check(server, empty, None) is not None:
        # Before the V2 front end exists, /healthz stands in, and says so.
        empty = Endpoint("empty endpoint (/healthz)", "GET", "/healthz")
    endpoints = [
        empty,
        _native("digits", singles),
        _v2_json("digits", singles, in_name, "V2 JSON"),
        _v2_binary("digits", singles, in_name, out_name),
        _tf_serving("digits", singles),
    ]
    rows: list[dict[str, Any]] = []
    for clients in args.concurrency:
        rows += _run_rows(plan, server, endpoints, [clients], digits)
    for model_name, model, batches in (
        ("digits", digits, digit_batches),
        ("wide", wide, wide_batches),
    ):
        names = _v2_names(server.url, model_name)
        formats = [
            _native(model_name, batches),
            _v2_json(model_name, batches, names[0], "V2 JSON"),
            _v2_binary(model_name, batches, *names),
            _tf_serving(model_name, batches),
        ]
        rows += _run_rows(plan, server, formats, [args.batch_clients], model, model=model_name)
    if not args.quick:
        rows += _client_check(plan, server, empty, max(args.concurrency))
    for row in rows:
        row.setdefault("server", "spectral api")
    return rows


def main() -> None:
    from bench.bench_output import configure_logging, environment, write_results

    args = _parse()
    configure_logging(args.verbose)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    top = max(args.concurrency)
    service_command = [sys.executable, "-m", "service.cli", "api", "--port"]
    results: dict[str, list[dict[str, Any]]] = {
        "service": [],
        "naive": [],
        "mlserver": [],
        "service_info_logging": [],
    }
    workers = max(args.client_processes, 1 if args.quick else 4)
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        ProcessPoolExecutor(workers, mp_context=_spawn()) as pool,
    ):
        tmp = Path(tmp_name)
        port, naive_port = _free_port(), _free_port()
        env = {
            "SPECTRAL_DATA_DIR": str(tmp / "data"),
            "PYTHONPATH": str(REPO_ROOT),
            "SPECTRAL_LOG_LEVEL": args.service_log_level,
        }
        digits_path, wide_path = tmp / "digits.keras", tmp / "wide.keras"
        naive_command = [sys.executable, "-m", "uvicorn", "bench.serving:naive_app", "--factory"]
        naive_command += ["--port", str(naive_port), "--log-level", "warning"]
        naive_env = {"NAIVE_MODEL_PATH": str(digits_path), "PYTHONPATH": str(REPO_ROOT)}
        with ExitStack() as servers:
            # Start-ups overlap the training; both servers are up and idle before any row.
            service_ready = servers.enter_context(
                _started([*service_command, str(port)], port, "/healthz", env, tmp / "api.log")
            )
            warm_pool(pool, workers)
            plan = LoadPlan(pool, args.client_processes, args.warmup, args.duration)
            digits, x, accuracy = _train_digits(digits_path, args.epochs)
            wide, wide_x = _wide_model(wide_path)
            logger.info("digits model: train accuracy %.3f", accuracy)
            naive_ready = servers.enter_context(
                _started(naive_command, naive_port, "/docs", naive_env, tmp / "naive.log")
            )
            singles = [x[i : i + 1] for i in range(0, len(x), max(1, len(x) // 64))][:64]
            digit_batches = [x[:BATCH_ROWS], x[BATCH_ROWS : 2 * BATCH_ROWS]]
            wide_batches = [wide_x[:BATCH_ROWS], wide_x[BATCH_ROWS:]]
            server = service_ready()
            server.command = "spectral api"
            _upload(server.url, "digits", digits_path)
            _upload(server.url, "wide", wide_path)
            naive = naive_ready()
            naive.command = "naive"
            in_name = _v2_names(server.url, "digits")[0]
            results["service"] = _service_rows(
                plan, server, args, digits, wide, singles, digit_batches, wide_batches
            )
            results["naive"] = _run_rows(
                plan, naive, [_naive(singles)], args.concurrency, digits, server="naive"
            )

        if not args.quick and args.service_log_level != "INFO":
            # The default level, INFO, writes one plain-text access-log line per request
            # (uvicorn's logger): what that costs, on the empty endpoint and V2 JSON.
            info_env = {**env, "SPECTRAL_LOG_LEVEL": "INFO", "SPECTRAL_DATA_DIR": str(tmp / "d2")}
            info_port = _free_port()
            command = [*service_command, str(info_port)]
            with _server(command, info_port, "/healthz", info_env, tmp / "api-info.log") as server:
                server.command = "spectral api (INFO logging)"
                _upload(server.url, "digits", digits_path)
                logged = [_empty(), _v2_json("digits", singles, in_name, "V2 JSON")]
                results["service_info_logging"] = _run_rows(
                    plan, server, logged, args.concurrency, digits, server=server.command
                )

        if not args.skip_mlserver:
            for batched in (False, True):
                with _mlserver(digits_path, batched, tmp) as ml:
                    ml_endpoints = [
                        _empty("empty endpoint"),
                        _v2_json("digits", singles, in_name, "V2 JSON"),
                    ]
                    results["mlserver"] += _run_rows(
                        plan, ml, ml_endpoints, args.concurrency, digits, server=ml.command
                    )
                    if not batched:
                        # The fastest empty endpoint at hand: the client's ceiling shows best.
                        for row in _client_check(plan, ml, ml_endpoints[0], top):
                            results["mlserver"].append({**row, "server": ml.command})

    payload: dict[str, Any] = {
        "environment": environment(),
        "config": {
            "quick": args.quick,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "client_processes": args.client_processes,
            "batch_clients": args.batch_clients,
            "batch_rows": BATCH_ROWS,
            "epochs": args.epochs,
            "service_command": "spectral api --port PORT (python -m service.cli api)",
            "service_env": {
                **{k: v for k, v in os.environ.items() if k.startswith("SPECTRAL_")},
                "SPECTRAL_LOG_LEVEL": args.service_log_level,
            },
            "uncommitted_service_files": _uncommitted("service"),
            "client": "closed-loop keep-alive HTTP/1.1 connections, asyncio + uvloop in "
            f"{args.client_processes} processes, requests encoded beforehand",
        },
        "train_accuracy": accuracy,
        "mlserver_version": None if args.skip_mlserver else _mlserver_version(),
        "mlserver_requirements": None if args.skip_mlserver else MLSERVER_REQUIREMENTS,
        "results": results,
    }
    payload["targets"] = _targets(results, top)
    stem = "serving_quick" if args.quick else "serving"
    write_results(args.out_dir, stem, payload, _markdown(payload))


def _uncommitted(path: str) -> list[str] | None:
    """Files under ``path`` that differ from the recorded revision (what else the run served)."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", path],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [line[3:] for line in status.splitlines()]


def _spawn() -> Any:
    import multiprocessing

    # Not fork: this process has TensorFlow's threads running by the time clients start.
    return multiprocessing.get_context("spawn")


if __name__ == "__main__":
    main()
