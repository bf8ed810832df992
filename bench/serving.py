"""Serving benchmark: latency and throughput of POST predict under concurrent clients.

Trains a small digits model (64 -> Spectral(64) -> Spectral(32) -> Dense(10), a few epochs),
uploads it to the real service (uvicorn subprocess, SQLite registry in a temp dir) and measures,
at 1, 8 and 32 concurrent clients (threads, one keep-alive httpx client each, one digit per
request):

* ``service predict``: ``POST /models/digits/predict`` of the service;
* ``service floor``: ``GET /healthz`` of the same server, the cost of HTTP + FastAPI alone;
* ``naive predict``: a minimal FastAPI app defined here that calls ``model.predict`` per request.

Client and servers share the machine's cores, so absolute numbers are pessimistic; compare rows.

Usage: ``python bench/serving.py [--requests 300] [--concurrency 1 8 32] [--epochs 5]``.
Writes ``bench/results/serving.json`` and ``serving.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel

REPO_ROOT = Path(__file__).resolve().parents[1]
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


# -- helpers ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _uvicorn(target: str, env: dict[str, str], log_path: Path) -> Iterator[str]:
    port = _free_port()
    child_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", target, "--factory", "--port", str(port)]
            + ["--log-level", "warning"],
            cwd=REPO_ROOT,
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{target} did not start:\n{log_path.read_text()[-3000:]}")
            try:
                httpx.get(url + "/docs", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _train_model(path: Path, epochs: int) -> tuple[np.ndarray, float]:
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
    return x, float(history.history["accuracy"][-1])


def _load(
    call: Callable[[httpx.Client, int], httpx.Response], clients: int, requests: int, url: str
) -> dict[str, float]:
    """Runs ``requests`` calls spread over ``clients`` threads; latency percentiles + rate."""
    per_client = max(1, requests // clients)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(index: int) -> None:
        nonlocal errors
        local: list[float] = []
        bad = 0
        with httpx.Client(base_url=url, timeout=120) as client:
            call(client, index)  # open the connection before the clock starts
            barrier.wait()
            for i in range(per_client):
                start = time.perf_counter()
                response = call(client, index * per_client + i)
                local.append(time.perf_counter() - start)
                bad += response.status_code != 200
        with lock:
            latencies.extend(local)
            errors += bad

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput_rps": len(latencies) / wall,
    }


def main() -> None:
    from bench.bench_output import configure_logging, environment, markdown_table, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args()
    configure_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_path = tmp / "digits.keras"
        x, accuracy = _train_model(model_path, args.epochs)
        logger.info("trained digits model: train accuracy %.3f", accuracy)
        rows = [x[i : i + 1].tolist() for i in range(len(x))]

        def predict_call(client: httpx.Client, i: int) -> httpx.Response:
            return client.post("/models/digits/predict", json={"inputs": rows[i % len(rows)]})

        def floor_call(client: httpx.Client, i: int) -> httpx.Response:
            return client.get("/healthz")

        def naive_call(client: httpx.Client, i: int) -> httpx.Response:
            return client.post("/predict", json={"inputs": rows[i % len(rows)]})

        results: list[dict[str, Any]] = []
        service_env = {"SPECTRAL_DATA_DIR": str(tmp / "data")}
        with _uvicorn("service.api.app:create_app", service_env, tmp / "service.log") as url:
            with model_path.open("rb") as handle:
                created = httpx.post(
                    url + "/models",
                    data={"name": "digits"},
                    files={"file": ("digits.keras", handle)},
                    timeout=120,
                )
            created.raise_for_status()
            calls = (("service predict", predict_call), ("service floor", floor_call))
            for clients in args.concurrency:
                for name, call in calls:
                    row = {"server": name, **_load(call, clients, args.requests, url)}
                    logger.info("%s", row)
                    results.append(row)
        naive_env = {"NAIVE_MODEL_PATH": str(model_path)}
        with _uvicorn("bench.serving:naive_app", naive_env, tmp / "naive.log") as url:
            for clients in args.concurrency:
                row = {"server": "naive predict", **_load(naive_call, clients, args.requests, url)}
                logger.info("%s", row)
                results.append(row)

    failed = [r for r in results if r["errors"]]
    if failed:
        raise RuntimeError(f"requests failed during the benchmark: {failed}")
    order = {"service floor": 0, "service predict": 1, "naive predict": 2}
    results.sort(key=lambda r: (r["clients"], order[r["server"]]))
    table = markdown_table(
        ["clients", "server", "p50 ms", "p99 ms", "req/s", "errors"],
        [
            [
                str(r["clients"]),
                r["server"],
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['throughput_rps']:.0f}",
                str(r["errors"]),
            ]
            for r in results
        ],
    )
    env = environment()
    markdown = (
        "# Serving benchmark\n\n"
        f"POST predict of one digit (64 floats) to a 64-64-32-10 Spectral model, "
        f"{args.requests} requests per row, uvicorn with 1 worker; clients and server share "
        f"{env['cpu_count']} CPUs ({env['keras_backend']} backend, {env['date_utc']}).\n\n"
        "`service floor` is GET /healthz on the same server; `naive predict` is a FastAPI app "
        "calling `model.predict` per request.\n\n" + table
    )
    write_results(
        args.out,
        "serving",
        {"environment": env, "train_accuracy": accuracy, "results": results},
        markdown,
    )


if __name__ == "__main__":
    main()
