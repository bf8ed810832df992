"""Prometheus metrics: HTTP requests and predictions counted by each API process, and job
metrics read from the database at scrape time.

Each app gets its own `CollectorRegistry`, so several apps in one process (tests) don't clash.

Several API processes (``spectral api --workers N``): the CLI points ``PROMETHEUS_MULTIPROC_DIR``
at a fresh directory before uvicorn starts its workers. prometheus-client then keeps every
counter and histogram in a memory-mapped file per process, and a scrape of any worker sums the
files of all of them (`multiprocess.MultiProcessCollector`). Without the variable (in-process
apps, tests) a scrape reports this process's registry, as a single process always did.

Job metrics come from the `jobs` table, not from the workers: workers may run on other machines,
and the table is the record of every job anyway. One grouped query per scrape computes them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, Float, and_, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from service.db import Database
from service.jobs.params import JobStatus, Method
from service.jobs.table import TERMINAL_STATUSES, Job

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Jobs take seconds (a percentile prune of a small model) to an hour (a metric sweep).
JOB_DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def multiprocess_dir() -> Path | None:
    """The directory the metrics of all API processes are shared through, or None.

    The variable only counts when prometheus-client read it at import: values created before it
    was set live in process memory, and summing the (absent) files would report nothing.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return None
    if values.ValueClass is values.MutexValue:
        logger.warning(
            "%s was set after prometheus_client was imported: /metrics reports this process only",
            MULTIPROC_ENV,
        )
        return None
    return Path(directory)


def mark_this_process_dead() -> None:
    """Called as an API process stops: drops its live-gauge files (its counters stay summed)."""
    directory = multiprocess_dir()
    if directory is not None:
        mark_process_dead(os.getpid(), str(directory))


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "spectral_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "spectral_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "spectral_predict_requests_total",
            "Predict requests by model, version and outcome (ok or an error code).",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.predict_latency = Histogram(
            "spectral_predict_duration_seconds",
            "Predict latency (validation + forward pass) by model and version.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.predict_forwards = Counter(
            "spectral_predict_forwards_total",
            "Forward passes of the predict core by model and version (fewer than requests "
            "when concurrent requests are batched).",
            ["model", "version"],
            registry=self.registry,
        )
        self.predict_batch_rows = Histogram(
            "spectral_predict_batch_rows",
            "Rows per forward pass of the predict core (adaptive batching).",
            ["model", "version"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )

    def render(self, *extra: Collector) -> bytes:
        """The Prometheus text of every API process (or of this one alone), plus ``extra``."""
        scrape = CollectorRegistry()
        directory = multiprocess_dir()
        if directory is not None:
            MultiProcessCollector(scrape, path=str(directory))
        else:
            # A registry is a collector: its metrics are read at each scrape.
            scrape.register(self.registry)  # type: ignore[arg-type]
        for collector in extra:
            scrape.register(collector)
        return generate_latest(scrape)


class _SecondsBetween(FunctionElement[float]):
    """``end - start`` in seconds, on SQLite and PostgreSQL (date arithmetic differs)."""

    type = Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(_SecondsBetween)
def _seconds_between_epoch(element: _SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


@compiles(_SecondsBetween, "sqlite")
def _seconds_between_sqlite(element: _SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


class JobMetrics(Collector):
    """Jobs by method and status, the duration of finished jobs, and the queued jobs per queue,
    read from the `jobs` table at each scrape (one grouped query).

    They are the same on every API replica: aggregate them across replicas with ``max``, not
    ``sum``. A failed query is logged and reported as ``spectral_job_metrics_up 0``, so the
    HTTP metrics are still scraped while the database is down.
    """

    def __init__(self, database: Database, queues: Sequence[str] = ()) -> None:
        self.database = database
        self.queues = tuple(queues)

    def describe(self) -> Iterable[Metric]:
        # Without this the registry would run the query to learn the names.
        return self._families(())

    def collect(self) -> Iterable[Metric]:
        try:
            rows = self._query()
        except Exception as exc:  # any database failure: the scrape must still answer
            # The exception text can name hosts and credentials: it goes to the log only.
            logger.warning("job metrics query failed: %s", exc)
            up = GaugeMetricFamily(
                "spectral_job_metrics_up", "1 when the jobs table could be read at this scrape."
            )
            up.add_metric([], 0)
            return [up]
        return self._families(rows)

    def _query(self) -> list[Any]:
        timed = and_(
            Job.status.in_(TERMINAL_STATUSES),
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        duration: ColumnElement[float | None] = case(
            (timed, _SecondsBetween(Job.started_at, Job.finished_at))
        )
        buckets = [func.count(case((duration <= bound, 1))) for bound in JOB_DURATION_BUCKETS]
        statement = select(
            Job.method,
            Job.status,
            Job.queue,
            func.count(),
            func.count(duration),
            func.coalesce(func.sum(duration), 0.0),
            *buckets,
        ).group_by(Job.method, Job.status, Job.queue)
        with self.database.session() as session:
            return list(session.execute(statement).all())

    def _families(self, rows: Iterable[Any]) -> Iterator[Metric]:
        by_status = {(m, s): 0 for m in get_args(Method) for s in get_args(JobStatus)}
        depth = dict.fromkeys(self.queues, 0)
        durations: dict[tuple[str, str], list[float]] = {}
        for method, status, queue, count, timed, total, *cumulative in rows:
            by_status[method, status] = by_status.get((method, status), 0) + count
            if status == "queued":
                depth[queue] = depth.get(queue, 0) + count
            if timed:
                # [count, sum, bucket counts...], summed over queues.
                sums = durations.setdefault((method, status), [0.0] * (2 + len(cumulative)))
                for i, value in enumerate((timed, total, *cumulative)):
                    sums[i] += float(value)
        jobs = GaugeMetricFamily(
            "spectral_jobs",
            "Jobs in the database by method and status.",
            labels=["method", "status"],
        )
        for (method, status), count in sorted(by_status.items()):
            jobs.add_metric([method, status], count)
        yield jobs
        histogram = HistogramMetricFamily(
            "spectral_job_duration_seconds",
            "Run time (finished_at - started_at of the last attempt) of finished jobs.",
            labels=["method", "status"],
        )
        for (method, status), (count, total, *cumulative) in sorted(durations.items()):
            bounds = [str(bound) for bound in JOB_DURATION_BUCKETS]
            histogram.add_metric(
                [method, status],
                [*zip(bounds, cumulative, strict=True), ("+Inf", count)],
                sum_value=total,
            )
        yield histogram
        queue_depth = GaugeMetricFamily(
            "spectral_job_queue_depth",
            "Jobs waiting to start (status queued), by queue.",
            labels=["queue"],
        )
        for queue, count in sorted(depth.items()):
            queue_depth.add_metric([queue], count)
        yield queue_depth
        up = GaugeMetricFamily(
            "spectral_job_metrics_up", "1 when the jobs table could be read at this scrape."
        )
        up.add_metric([], 1)
        yield up
