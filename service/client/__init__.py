"""The registry's Python client: `Client` (httpx), on the server's own pydantic schemas.

It imports httpx, pydantic, `service.api.schemas` and `service.jobs.params`, and nothing of
TensorFlow, Keras, FastAPI, SQLAlchemy or Celery (a test checks it in a fresh interpreter), so
``pip install "spectral-pruning[client]"`` is enough to use it.
"""

from service.client.errors import (
    EXIT_GATE_REFUSED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ApiError,
    ClientError,
    ServerUnavailable,
    WaitTimeout,
)
from service.client.http import DEFAULT_URL, TERMINAL_STATUSES, Client

__all__ = [
    "DEFAULT_URL",
    "EXIT_GATE_REFUSED",
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "TERMINAL_STATUSES",
    "ApiError",
    "Client",
    "ClientError",
    "ServerUnavailable",
    "WaitTimeout",
]
