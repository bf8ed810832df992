"""Scale-out: jobs and predictions through several API processes and workers sharing only
PostgreSQL, Redis and an S3 bucket.

Starts ``--apis`` API processes (``spectral api``, one port each; clients are spread over the
ports, no proxy) and ``--workers`` Celery workers (one pool process each) on:

- a fresh PostgreSQL database on ``--postgres`` (created here, dropped at the end);
- Redis database ``--redis-db`` on ``--redis`` (flushed at the end: give it a number nobody
  else uses) and a queue name of this run's own;
- a moto S3 server on 127.0.0.1 (a real S3 HTTP API in a subprocess).

Uploads a small trained digits model, measures predict latency alone (the baseline), then
submits ``--jobs`` percentile pruning jobs from ``--clients`` concurrent clients while the
predict traffic goes on, and follows each job to its end. Reports jobs/minute, end-to-end job
latency (POST /prune to the poll that sees the job finished), predict p50/p99 with and without
the job load, the database connections (pg_stat_activity, sampled), and the bookkeeping check:
every job terminal, exactly one new version per succeeded job, nothing lost or duplicated.

    .venv/bin/python bench/scale.py            # 200 jobs, 16 clients, 2 APIs, 3 workers
    .venv/bin/python bench/scale.py --quick    # 12 jobs, 4 clients, 1 API, 1 worker (~1 min)
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
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from bench_output import (  # noqa: E402
    RESULTS_DIR,
    configure_logging,
    environment,
    markdown_table,
    write_results,
)

logger = logging.getLogger("bench.scale")

TERMINAL = ("succeeded", "failed", "cancelled")
# moto accepts any credentials; boto3 only needs some to sign its requests.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "spectral-bench",
    "AWS_SECRET_ACCESS_KEY": "spectral-bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
START_TIMEOUT_S = 180.0


@dataclass
class Config:
    jobs: int
    clients: int
    apis: int
    workers: int
    predict_clients: int
    baseline_s: float
    client_poll_s: float
    job_timeout_s: float
    epochs: int


FULL = Config(200, 16, 2, 3, 2, 20.0, 0.2, 1200.0, 5)
QUICK = Config(12, 4, 1, 1, 1, 5.0, 0.1, 240.0, 2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


def _latency(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_s": _percentile(values, 50),
        "p99_s": _percentile(values, 99),
        "max_s": max(values) if values else None,
    }


# -- processes ------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _child_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SPECTRAL_", "AWS_"))}
    return {**base, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **env}


def _start(name: str, argv: list[str], env: dict[str, str], work: Path) -> Process:
    log_path = work / f"{name}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=_child_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopped with its pool children
        )
    return Process(name, popen, log_path)


def _stop(process: Process, timeout: float = 30.0) -> None:
    if process.popen.poll() is not None:
        return
    process.popen.terminate()
    try:
        process.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=15)


def _wait_for(process: Process, ready: Any, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited:\n{process.log_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{process.name} did not {what} in time:\n{process.log_text()[-3000:]}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def _processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            _stop(process)


@contextmanager
def _postgres_database(admin_url: str) -> Iterator[tuple[str, str]]:
    """A database of this run's own: ``(sqlalchemy_url, name)``; dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"spectral_scale_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}", name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def _redis_db(url: str) -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(url)
    client.ping()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@contextmanager
def _s3_bucket(work: Path) -> Iterator[str]:
    """A moto S3 server on a free port with one bucket; yields its endpoint."""
    from service.artifacts import new_s3_client

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = _start(
        "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], {}, work
    )
    try:
        _wait_for(server, lambda: _answers(f"{endpoint}/moto-api/"), "answer")
        saved = {name: os.environ.get(name) for name in AWS_ENV}
        os.environ.update(AWS_ENV)
        try:
            new_s3_client(endpoint).create_bucket(Bucket="spectral-scale")
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        yield endpoint
    finally:
        _stop(server)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


# -- load -----------------------------------------------------------------------------------


@dataclass
class JobRecord:
    job_id: str | None
    submitted_at: float
    status: str = "submitting"
    latency_s: float | None = None
    server: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class PredictLoad:
    """Threads that call predict round robin over the APIs until stopped; latencies in
    seconds, by phase."""

    def __init__(self, apis: list[str], threads: int, model: str, rows: list[list[float]]):
        self.apis, self.model, self.rows = apis, model, rows
        self.phase = "baseline"
        self.latencies: dict[str, list[float]] = {"baseline": [], "under_jobs": []}
        self.errors: dict[str, int] = {"baseline": 0, "under_jobs": 0}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, index: int) -> None:
        clients = [httpx.Client(base_url=api, timeout=60) for api in self.apis]
        body = {"inputs": self.rows}
        i = index
        try:
            while not self._stop.is_set():
                client = clients[i % len(clients)]
                i += 1
                phase = self.phase
                started = time.perf_counter()
                try:
                    response = client.post(f"/models/{self.model}/versions/1/predict", json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - started
                if ok:
                    self.latencies[phase].append(elapsed)
                else:
                    self.errors[phase] += 1
        finally:
            for client in clients:
                client.close()


class ConnectionSampler:
    """Samples the connections to the run's database (pg_stat_activity) twice a second."""

    def __init__(self, admin_url: str, database: str) -> None:
        from sqlalchemy import create_engine

        self.database = database
        self.samples: list[int] = []
        self._engine = create_engine(admin_url, pool_size=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._engine.dispose()

    def _run(self) -> None:
        from sqlalchemy import text

        query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name")
        while not self._stop.is_set():
            with self._engine.connect() as conn:
                count = conn.execute(query, {"name": self.database}).scalar()
                self.samples.append(int(count or 0))
            self._stop.wait(0.5)


def _submit_and_follow(
    apis: list[str], config: Config, model: str, records: list[JobRecord]
) -> None:
    """``config.clients`` threads take job numbers from one counter, submit each to the next
    API, and poll it to its end."""
    counter = iter(range(config.jobs))
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        with httpx.Client(base_url=apis[index % len(apis)], timeout=60) as client:
            while True:
                with lock:
                    number = next(counter, None)
                if number is None:
                    return
                records[number] = _one_job(client, number, config, model)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(config.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _one_job(client: httpx.Client, number: int, config: Config, model: str) -> JobRecord:
    body = {"model_id": model, "version": 1, "method": "percentile", "percentile": 5 + number % 50}
    started = time.perf_counter()
    record = JobRecord(None, time.time())
    try:
        response = client.post("/prune", json=body)
    except httpx.HTTPError as exc:
        record.status, record.error = "submit_failed", type(exc).__name__
        return record
    if response.status_code != 202:
        record.status, record.error = "submit_failed", f"{response.status_code} {response.text}"
        return record
    record.job_id = response.json()["job_id"]
    deadline = time.monotonic() + config.job_timeout_s
    while time.monotonic() < deadline:
        try:
            job = client.get(f"/jobs/{record.job_id}").json()
        except (httpx.HTTPError, ValueError):
            time.sleep(config.client_poll_s)
            continue
        record.status = job.get("status", "unknown")
        if record.status in TERMINAL:
            record.latency_s = time.perf_counter() - started
            record.server = {k: job.get(k) for k in ("created_at", "started_at", "finished_at")}
            record.server["result_version"] = (job.get("result") or {}).get("version")
            record.error = job.get("error")
            return record
        time.sleep(config.client_poll_s)
    record.status = f"timed_out ({record.status})"
    return record


def _bookkeeping(database_url: str, records: list[JobRecord], queue: str) -> dict[str, Any]:
    """Lost or duplicated work, from the database itself: every submitted job is there, once,
    and terminal; each succeeded job made exactly one version, and no version lacks its job."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            jobs = {
                row.id: (row.status, row.result_version)
                for row in conn.execute(
                    text("SELECT id, status, result_version FROM jobs WHERE queue = :q"),
                    {"q": queue},
                )
            }
            versions = list(conn.execute(text("SELECT version, job_id FROM model_versions")))
    finally:
        engine.dispose()
    submitted = [r.job_id for r in records if r.job_id is not None]
    by_job: dict[str, list[int]] = {}
    for version, job_id in versions:
        if job_id is not None:
            by_job.setdefault(job_id, []).append(version)
    succeeded = [job_id for job_id in submitted if jobs.get(job_id, ("", None))[0] == "succeeded"]
    return {
        "submitted": len(records),
        "submit_failed": sum(r.status == "submit_failed" for r in records),
        "in_database": len(jobs),
        "lost": sum(job_id not in jobs for job_id in submitted)
        + sum(r.job_id is None for r in records),
        "duplicated_ids": len(submitted) - len(set(submitted)),
        "unknown_jobs_in_database": len(set(jobs) - set(submitted)),
        "not_terminal": sum(status not in TERMINAL for status, _ in jobs.values()),
        "succeeded": len(succeeded),
        "failed": sum(status == "failed" for status, _ in jobs.values()),
        "versions_from_jobs": sum(len(v) for v in by_job.values()),
        "jobs_without_version": sum(job_id not in by_job for job_id in succeeded),
        "jobs_with_several_versions": sum(len(v) > 1 for v in by_job.values()),
        "version_mismatch": sum(
            by_job.get(job_id, [None])[0] != jobs[job_id][1] for job_id in succeeded
        ),
        "versions_without_job": len(versions) - 1 - sum(len(v) for v in by_job.values()),
    }


# -- run ------------------------------------------------------------------------------------


def run(config: Config, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from digits_setup import load_digits_split, train_digits_model

    from service.db import upgrade_database
    from service.settings import Settings

    data = load_digits_split()
    model = train_digits_model(data, seed=0, epochs=config.epochs)
    model_path = work / "digits.keras"
    model.save(model_path)
    rows = np.asarray(data.x_test[:8], dtype="float32").tolist()
    queue = f"scale-{uuid.uuid4().hex[:8]}"

    with ExitStack() as stack:
        database_url, database = stack.enter_context(_postgres_database(args.postgres))
        broker_url = stack.enter_context(_redis_db(f"{args.redis}/{args.redis_db}"))
        endpoint = stack.enter_context(_s3_bucket(work))
        shared = {
            **AWS_ENV,
            "AWS_ENDPOINT_URL": endpoint,
            "SPECTRAL_ARTIFACT_URL": "s3://spectral-scale/registry",
            "SPECTRAL_DATABASE_URL": database_url,
            "SPECTRAL_BROKER_URL": broker_url,
            "SPECTRAL_DEFAULT_QUEUE": queue,
            "SPECTRAL_LOG_LEVEL": "WARNING",
        }
        # Migrated once, here: processes starting together would race to create the tables.
        upgrade_database(Settings(database_url=database_url, data_dir=work / "migrate"))
        processes = stack.enter_context(_processes())
        sampler = ConnectionSampler(args.postgres, database)
        sampler.start()
        stack.callback(sampler.stop)

        workers = []
        for i in range(config.workers):
            env = {**shared, "SPECTRAL_DATA_DIR": str(work / f"worker-{i}")}
            argv = [sys.executable, "-m", "worker", "--concurrency", "1", "--queues", queue]
            workers.append(_start(f"worker-{i}", argv + ["--loglevel", "INFO"], env, work))
        processes.extend(workers)
        apis = []
        for i in range(config.apis):
            port = _free_port()
            env = {**shared, "SPECTRAL_DATA_DIR": str(work / f"api-{i}")}
            argv = [sys.executable, "-m", "service.cli", "api", "--host", "127.0.0.1"]
            processes.append(_start(f"api-{i}", argv + ["--port", str(port)], env, work))
            apis.append(f"http://127.0.0.1:{port}")
        for process, url in zip(processes[len(workers) :], apis, strict=True):
            _wait_for(process, lambda url=url: _healthy(url), "become healthy")
        for worker in workers:
            _wait_for(worker, lambda w=worker: "pool child ready" in w.log_text(), "get ready")
        idle_connections = max(sampler.samples[-3:], default=0)
        logger.info(
            "%d APIs and %d workers up; %d DB connections",
            len(apis),
            len(workers),
            idle_connections,
        )

        name = "digits"
        with open(model_path, "rb") as file:
            httpx.post(
                f"{apis[0]}/models",
                data={"name": name},
                files={"file": ("digits.keras", file, "application/octet-stream")},
                timeout=300,
            ).raise_for_status()

        load = PredictLoad(apis, config.predict_clients, name, rows)
        load.start()
        time.sleep(config.baseline_s)
        logger.info("baseline: %d predictions", len(load.latencies["baseline"]))
        load.phase = "under_jobs"
        records: list[JobRecord] = [JobRecord(None, 0.0, "not_submitted")] * config.jobs
        started = time.time()
        _submit_and_follow(apis, config, name, records)
        elapsed = time.time() - started
        load.stop()
        sampler.stop()
        bookkeeping = _bookkeeping(database_url, records, queue)
        crashed = [p.name for p in processes if p.popen.poll() is not None]

    finished = [r for r in records if r.latency_s is not None]
    server_run = [
        (
            datetime.fromisoformat(r.server["finished_at"])
            - datetime.fromisoformat(r.server["started_at"])
        ).total_seconds()
        for r in finished
        if r.server.get("started_at") and r.server.get("finished_at")
    ]
    return {
        "jobs": {
            "wall_s": elapsed,
            "jobs_per_minute": bookkeeping["succeeded"] / (elapsed / 60),
            "latency": _latency([r.latency_s for r in finished if r.latency_s is not None]),
            "worker_run": _latency(server_run),
            "errors": sorted({r.error for r in records if r.error})[:5],
        },
        "predict": {
            phase: {**_latency(load.latencies[phase]), "errors": load.errors[phase]}
            for phase in ("baseline", "under_jobs")
        },
        "database_connections": {
            "idle_before_load": idle_connections,
            "max": max(sampler.samples, default=0),
            "median": _percentile([float(s) for s in sampler.samples], 50),
            "samples": len(sampler.samples),
        },
        "bookkeeping": bookkeeping,
        "processes_exited_early": crashed,
        # What the run made for itself, and removed: for whoever checks nothing was left.
        "resources": {"database": database, "redis": broker_url, "queue": queue},
        "ok": _ok(bookkeeping, config) and not crashed,
    }


def _ok(bookkeeping: dict[str, Any], config: Config) -> bool:
    return (
        bookkeeping["succeeded"] == config.jobs
        and bookkeeping["in_database"] == config.jobs
        and all(
            bookkeeping[key] == 0
            for key in (
                "submit_failed",
                "lost",
                "duplicated_ids",
                "unknown_jobs_in_database",
                "not_terminal",
                "jobs_without_version",
                "jobs_with_several_versions",
                "version_mismatch",
                "versions_without_job",
            )
        )
    )


def _markdown(config: Config, result: dict[str, Any]) -> str:
    jobs, predict, conns, book = (
        result["jobs"],
        result["predict"],
        result["database_connections"],
        result["bookkeeping"],
    )

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    def s(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    rows = [
        ["jobs/minute", f"{jobs['jobs_per_minute']:.1f}"],
        [
            "job latency p50 / p99 (s)",
            f"{s(jobs['latency']['p50_s'])} / {s(jobs['latency']['p99_s'])}",
        ],
        ["worker run p50 (s)", s(jobs["worker_run"]["p50_s"])],
        [
            "predict p50 / p99, alone (ms)",
            f"{ms(predict['baseline']['p50_s'])} / {ms(predict['baseline']['p99_s'])}"
            f" (n={predict['baseline']['n']}, errors {predict['baseline']['errors']})",
        ],
        [
            "predict p50 / p99, under job load (ms)",
            f"{ms(predict['under_jobs']['p50_s'])} / {ms(predict['under_jobs']['p99_s'])}"
            f" (n={predict['under_jobs']['n']}, errors {predict['under_jobs']['errors']})",
        ],
        [
            "DB connections idle / max / median",
            f"{conns['idle_before_load']} / {conns['max']} / {conns['median']:.0f}"
            if conns["median"] is not None
            else "-",
        ],
        [
            "jobs succeeded / lost / duplicated / not terminal",
            f"{book['succeeded']} / {book['lost']} / {book['duplicated_ids']} / "
            f"{book['not_terminal']}",
        ],
        [
            "versions: from jobs / jobs without / jobs with several",
            f"{book['versions_from_jobs']} / {book['jobs_without_version']} / "
            f"{book['jobs_with_several_versions']}",
        ],
    ]
    return (
        "# Scale-out: jobs and predictions on PostgreSQL, Redis and S3\n\n"
        f"{config.apis} API processes (clients spread over their ports, no proxy), "
        f"{config.workers} Celery workers (one pool process each), PostgreSQL, Redis and a moto "
        f"S3 server on one machine. {config.jobs} percentile jobs on a small digits model from "
        f"{config.clients} concurrent clients (each submits, then polls every "
        f"{config.client_poll_s:g} s), while {config.predict_clients} client(s) call predict "
        f"(8 rows) in a loop; the predict baseline is {config.baseline_s:g} s of the same "
        "traffic before any job.\n\n"
        + markdown_table(["measure", "value"], rows)
        + f"\n{'PASS' if result['ok'] else 'FAIL'}: every job terminal and succeeded, one "
        "version per job, nothing lost or duplicated"
        + (
            f"; processes exited early: {result['processes_exited_early']}"
            if result["processes_exited_early"]
            else ""
        )
        + ".\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 jobs, 4 clients, 1 API, 1 worker")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--clients", type=int)
    parser.add_argument("--apis", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://127.0.0.1:5432/test",
        help="a database URL to connect as; the run creates and drops its own database there",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument(
        "--redis-db", type=int, default=12, help="a Redis database number nobody else uses"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    configure_logging(args.verbose)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    base = QUICK if args.quick else FULL
    overrides = {
        key: getattr(args, key)
        for key in ("jobs", "clients", "apis", "workers")
        if getattr(args, key) is not None
    }
    config = Config(**{**base.__dict__, **overrides})

    with tempfile.TemporaryDirectory(prefix="spectral-scale-") as tmp:
        result = run(config, args, Path(tmp))
    markdown = _markdown(config, result)
    payload = {"config": config.__dict__, "environment": environment(), **result}
    write_results(args.out_dir, "scale_quick" if args.quick else "scale", payload, markdown)
    logger.info("\n%s", markdown)
    if not result["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
