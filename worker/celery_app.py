"""The Celery application of the workers, built by `create_celery` from `Settings`.

Start a worker with ``spectral worker`` or ``python -m worker``. For ``celery -A
worker.celery_app``, the module attribute ``app`` is built on first access from the
environment, never at import. The broker is ``settings.resolved_broker_url``: an embedded SQLite
broker under ``data_dir`` by default, Redis when ``SPECTRAL_BROKER_URL=redis://...``.

TensorFlow is not fork-safe, so this module, and everything it imports, stays free of
TensorFlow, Keras and `spectral`: the pool's children import them after the fork.
"""

from __future__ import annotations

import logging
from functools import cache

from celery import Celery

from service.messaging import celery_config
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_celery(settings: Settings | None = None) -> Celery:
    """The workers' Celery app for ``settings`` (default: this process's), with the pruning task
    and the start-up and shutdown hooks registered."""
    # Imported for their side effects: the shared task and the worker signal handlers.
    import worker.lifecycle  # noqa: F401
    import worker.shutdown  # noqa: F401
    import worker.tasks  # noqa: F401

    settings = settings or get_settings()
    celery = Celery("spectral")
    celery.conf.update(celery_config(settings))
    return celery


@cache
def _app_from_env() -> Celery:
    return create_celery()


def __getattr__(name: str) -> Celery:
    # `celery -A worker.celery_app` looks up `app`; building it here keeps imports side-effect free.
    if name == "app":
        return _app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
