"""Pruning-job latency: POST /prune to `succeeded` through `spectral serve` (API + worker).

Starts `spectral serve` on a fresh data dir (SQLite registry, embedded SQLite broker, one real
Celery worker process), uploads a trained digits model, runs one untimed warm-up job so the
worker's pool child has loaded TensorFlow, then times ``--jobs`` percentile jobs one after the
other: wall time from the POST to the poll that sees ``succeeded``. Repeated for each broker
polling interval in ``--poll-intervals`` (kombu's own default is 1 s). Target: median < 3 s at
the default setting.

    .venv/bin/python bench/jobs.py            # ~2 min on 2 CPU cores
    .venv/bin/python bench/jobs.py --quick    # a few jobs, writes jobs_quick.*
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from bench_output import (  # noqa: E402
    RESULTS_DIR,
    configure_logging,
    environment,
    markdown_table,
    summary,
    write_results,
)
from digits_setup import load_digits_split, train_digits_model  # noqa: E402

from service.settings import Settings  # noqa: E402

logger = logging.getLogger("bench.jobs")
TARGET_MEDIAN_S = 3.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(data_dir: Path, port: int, poll_s: float, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECTRAL_")}
    env.update(
        {
            "SPECTRAL_BROKER_POLLING_INTERVAL_S": str(poll_s),
            "SPECTRAL_EMBEDDED_WORKER": "true",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": str(ROOT),
        }
    )
    command = [sys.executable, "-c", "from service.cli import app; app()", "serve"]
    command += ["--data-dir", str(data_dir), "--port", str(port)]
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_healthy(api: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{api}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("serve did not become healthy")


def _run_job(api: str, body: dict[str, Any], client_poll_s: float) -> dict[str, Any]:
    start = time.perf_counter()
    response = httpx.post(f"{api}/prune", json=body, timeout=60)
    response.raise_for_status()
    job_id = response.json()["job_id"]
    while True:
        job = httpx.get(f"{api}/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(client_poll_s)
    total = time.perf_counter() - start
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job['error']}")
    created, started, finished = (
        datetime.fromisoformat(job[key]) for key in ("created_at", "started_at", "finished_at")
    )
    return {
        "total_s": total,
        "queue_s": (started - created).total_seconds(),
        "run_s": (finished - started).total_seconds(),
    }


def _measure(
    model_path: Path, poll_s: float, jobs: int, client_poll_s: float, work: Path
) -> dict[str, Any]:
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    log_path = work / f"serve-{poll_s:g}.log"
    process = _serve(work / f"data-{poll_s:g}", port, poll_s, log_path)
    try:
        _wait_healthy(api, process, log_path)
        with open(model_path, "rb") as file:
            httpx.post(
                f"{api}/models",
                data={"name": "digits"},
                files={"file": ("digits.keras", file, "application/octet-stream")},
                timeout=120,
            ).raise_for_status()
        logger.info("poll %.3g s: warm-up job (the worker child loads TensorFlow)", poll_s)
        _run_job(api, {"model_id": "digits", "version": 1, "percentile": 5}, client_poll_s)
        runs = []
        for i in range(jobs):
            body = {"model_id": "digits", "version": 1, "percentile": 10 + 5 * (i % 10)}
            runs.append(_run_job(api, body, client_poll_s))
            logger.info("poll %.3g s: job %d took %.2f s", poll_s, i + 1, runs[-1]["total_s"])
    finally:
        process.send_signal(signal.SIGINT)  # uvicorn's graceful stop; serve stops its worker
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    return {
        "broker_polling_interval_s": poll_s,
        "runs": runs,
        "total_s": summary([r["total_s"] for r in runs]),
        "queue_s": summary([r["queue_s"] for r in runs]),
        "run_s": summary([r["run_s"] for r in runs]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10, help="timed jobs per setting")
    parser.add_argument(
        "--poll-intervals",
        default=f"{Settings().broker_polling_interval_s:g},1.0",
        help="comma-separated broker polling intervals (s); the first is the default setting",
    )
    parser.add_argument("--client-poll", type=float, default=0.05, help="GET /jobs interval (s)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of the model")
    parser.add_argument("--quick", action="store_true", help="3 jobs, one setting")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    configure_logging(args.verbose)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    intervals = [float(v) for v in args.poll_intervals.split(",")]
    jobs = args.jobs
    if args.quick:
        intervals, jobs = intervals[:1], 3

    data = load_digits_split()
    model = train_digits_model(data, seed=0, epochs=args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_path = work / "digits.keras"
        model.save(model_path)
        size = model_path.stat().st_size
        results = [_measure(model_path, p, jobs, args.client_poll, work) for p in intervals]

    default = results[0]
    passed = default["total_s"]["median"] < TARGET_MEDIAN_S
    rows = [
        [
            f"{r['broker_polling_interval_s']:g}",
            str(r["total_s"]["n"]),
            f"{r['total_s']['median']:.2f}",
            f"{r['total_s']['p90']:.2f}",
            f"{r['queue_s']['median']:.2f}",
            f"{r['run_s']['median']:.2f}",
        ]
        for r in results
    ]
    markdown = (
        "# Pruning job latency (POST /prune to succeeded)\n\n"
        "`spectral serve`: API + one embedded Celery worker on the SQLite broker and registry. "
        f"Digits model 64-200-300-10 ({size} bytes), percentile jobs, one at a time, warm "
        f"worker, client polls every {args.client_poll:g} s. Times in seconds; queue = created "
        "to started (broker delivery), run = started to finished (load, prune, measure, save).\n\n"
        + markdown_table(
            ["broker poll (s)", "jobs", "median", "p90", "queue median", "run median"], rows
        )
        + f"\n{'PASS' if passed else 'FAIL'}: median {default['total_s']['median']:.2f} s at "
        f"the default polling interval (target < {TARGET_MEDIAN_S:g} s).\n"
    )
    payload = {
        "config": {
            "jobs": jobs,
            "client_poll_s": args.client_poll,
            "model_bytes": size,
            "epochs": args.epochs,
        },
        "environment": environment(),
        "results": results,
        "target_median_s": TARGET_MEDIAN_S,
        "passed": passed,
    }
    write_results(args.out_dir, "jobs_quick" if args.quick else "jobs", payload, markdown)
    logger.info("\n%s", markdown)


if __name__ == "__main__":
    main()
