"""What must hold after any chaos: one checker every scenario ends with.

It reads the database and the artifact store directly, not through the API (which a scenario
may have killed), and counts the attempts that happened from the workers' own logs: each
start is one ``job <id> attempt <n>:`` line, each hand-back at shutdown one ``released`` line.
A killed worker's log survives it, so a start is counted even when the process died a moment
later.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from service.artifacts import store_for
from service.datasets import Dataset
from service.db import Database
from service.jobs.table import TERMINAL_STATUSES, Job
from service.settings import Settings
from service.versions import VersionRow

# The runner's start line, "job <id> attempt <n>: <method> on <model> v<version>".
_STARTED = re.compile(r"job ([0-9a-f]{32}) attempt (\d+): \w+ on \S+ v\d+")
_RELEASED = re.compile(
    r"job ([0-9a-f]{32}) (?:attempt \d+ released|released after its pool child was killed)"
)


def attempts_in_logs(logs: Iterable[Path]) -> Counter[str]:
    """Per job: attempts started minus attempts handed back (not counted), from worker logs."""
    counts: Counter[str] = Counter()
    for path in logs:
        text = path.read_text(errors="replace") if path.exists() else ""
        for job_id, _ in _STARTED.findall(text):
            counts[job_id] += 1
        for job_id in _RELEASED.findall(text):
            counts[job_id] -= 1
    return counts


@dataclass
class Snapshot:
    """The rows and blobs the invariants are about."""

    jobs: list[dict[str, Any]]
    versions: list[dict[str, Any]]
    dataset_shas: set[str]
    artifact_blobs: set[str]
    dataset_blobs: set[str]
    logged_attempts: Counter[str] = field(default_factory=Counter)

    def dump(self) -> str:
        rows = [
            {k: job[k] for k in ("id", "method", "status", "attempts", "step", "error")}
            for job in self.jobs
        ]
        return json.dumps(
            {
                "jobs": rows,
                "versions": [
                    {k: v[k] for k in ("model_id", "version", "job_id")} for v in self.versions
                ],
                "logged_attempts": dict(self.logged_attempts),
            },
            indent=1,
            default=str,
        )


def snapshot(settings: Settings, logs: Iterable[Path]) -> Snapshot:
    database = Database(settings)
    try:
        with database.session() as session:
            jobs = [
                {
                    "id": job.id,
                    "method": job.method,
                    "status": job.status,
                    "attempts": job.attempts,
                    "step": job.step,
                    "error": job.error,
                    "result_version": job.result_version,
                    "model_id": job.model_id,
                }
                for job in session.scalars(select(Job).order_by(Job.created_at))
            ]
            versions = [
                {
                    "model_id": row.model_id,
                    "version": row.version,
                    "job_id": row.job_id,
                    "parent_version": row.parent_version,
                    "sha256": row.sha256,
                    "report_png_sha256": row.report_png_sha256,
                }
                for row in session.scalars(select(VersionRow))
            ]
            dataset_shas = set(session.scalars(select(Dataset.sha256)))
    finally:
        database.dispose()
    return Snapshot(
        jobs=jobs,
        versions=versions,
        dataset_shas=dataset_shas,
        artifact_blobs=set(store_for(settings, "artifacts").shas()),
        dataset_blobs=set(store_for(settings, "datasets").shas()),
        logged_attempts=attempts_in_logs(logs),
    )


def violations(snap: Snapshot) -> list[str]:
    """Every broken invariant, in words (empty when all hold)."""
    found: list[str] = []
    jobs = {job["id"]: job for job in snap.jobs}
    by_job = Counter(v["job_id"] for v in snap.versions if v["job_id"] is not None)

    for job in snap.jobs:
        if job["status"] not in TERMINAL_STATUSES:
            found.append(f"job {job['id']} is not terminal: {job['status']} ({job['step']})")
        if by_job[job["id"]] > 1:
            found.append(f"job {job['id']} has {by_job[job['id']]} result versions")
        if job["status"] == "succeeded" and by_job[job["id"]] != 1:
            found.append(f"job {job['id']} succeeded without a result version")
        logged = snap.logged_attempts.get(job["id"], 0)
        if job["attempts"] != logged:
            found.append(
                f"job {job['id']} counts {job['attempts']} attempts but workers started "
                f"{logged} (net of releases)"
            )

    for version in snap.versions:
        name = f"{version['model_id']} v{version['version']}"
        job_id = version["job_id"]
        if job_id is None:
            continue  # an upload
        maker = jobs.get(job_id)
        if maker is None:
            found.append(f"version {name} names job {job_id}, which does not exist")
        elif maker["status"] != "succeeded" or maker["result_version"] != version["version"]:
            found.append(
                f"version {name} was made by job {job_id}, which is {maker['status']} with "
                f"result version {maker['result_version']}"
            )

    referenced = {v["sha256"] for v in snap.versions} | {
        v["report_png_sha256"] for v in snap.versions if v["report_png_sha256"]
    }
    for sha in sorted(snap.artifact_blobs - referenced):
        found.append(f"orphan artifact blob {sha}: no version or report references it")
    for sha in sorted(referenced - snap.artifact_blobs):
        found.append(f"artifact blob {sha} is referenced but missing from the store")
    for sha in sorted(snap.dataset_blobs - snap.dataset_shas):
        found.append(f"orphan dataset blob {sha}: no dataset row references it")
    return found


def check_invariants(settings: Settings, logs: Iterable[Path]) -> Snapshot:
    """Asserts every invariant; the failure message lists what broke and dumps the rows."""
    snap = snapshot(settings, list(logs))
    broken = violations(snap)
    assert not broken, "chaos invariants broken:\n- " + "\n- ".join(broken) + "\n" + snap.dump()
    return snap
