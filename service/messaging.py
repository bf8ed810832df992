"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled at our interval.

kombu's ``sqla`` transport hands every transport option to ``create_engine``, so the usual
``polling_interval`` option breaks it. This transport (alias ``spectral-sqla``) keeps the
polling options for kombu and gives the engine only what SQLite needs: a busy timeout, since
the API and every worker open the same file.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as sqla
from sqlalchemy import create_engine

ALIAS = "spectral-sqla"
_SQLITE_BUSY_TIMEOUT_S = 30


class Channel(sqla.Channel):  # type: ignore[misc]
    def _engine_from_config(self) -> Any:
        return create_engine(
            self.connection.client.hostname,
            connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        )


class Transport(sqla.Transport):  # type: ignore[misc]
    Channel = Channel


def embedded_url(url: str) -> str:
    """Route a ``sqla+`` URL to this transport; other URLs are returned unchanged."""
    if url.startswith("sqla+"):
        return f"{ALIAS}+{url.removeprefix('sqla+')}"
    return url


TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"
