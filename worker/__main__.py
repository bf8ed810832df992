"""``python -m worker``: run a Celery worker for pruning jobs, configured from SPECTRAL_*."""

from __future__ import annotations

import argparse
import uuid

from service.settings import get_settings
from worker.celery_app import create_celery


def worker_argv(queues: list[str], *, concurrency: int, loglevel: str) -> list[str]:
    """Arguments of ``celery worker`` for these queues (the prefork pool: one job per child)."""
    return [
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "--pool",
        "prefork",
        "--loglevel",
        loglevel,
        "--hostname",
        f"spectral-{uuid.uuid4().hex[:8]}@%h",
        # Workers coordinate through the jobs table, not through each other.
        "--without-gossip",
        "--without-mingle",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--queues", help="Comma-separated queues. Default: all the settings name.")
    parser.add_argument("--concurrency", type=int, default=1, help="Pool processes (one job each).")
    parser.add_argument("--loglevel", default="INFO", help="Celery log level.")
    args = parser.parse_args(argv)
    settings = get_settings()
    queues = args.queues.split(",") if args.queues else settings.all_queues
    celery = create_celery(settings)
    celery.worker_main(worker_argv(queues, concurrency=args.concurrency, loglevel=args.loglevel))


if __name__ == "__main__":
    main()
