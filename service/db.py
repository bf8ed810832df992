"""Database engine, sessions, schema migrations (Alembic), and the one UTC datetime column type."""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, Dialect, Engine, TypeDecorator, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from service.settings import Settings

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# An arbitrary constant: the PostgreSQL advisory lock that serialises concurrent migrations.
_MIGRATION_LOCK_ID = 0x5EC7_0001
# Backoff of `Database.transaction` between tries, in seconds (doubling up to the cap).
_RETRY_FIRST_S, _RETRY_MAX_S = 0.2, 5.0

T = TypeVar("T")


class Base(DeclarativeBase):
    pass


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC: every stored time is one of these."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime column on every backend.

    SQLite stores datetimes without their zone and hands back naive values; this type puts UTC
    back on the way out, so no caller ever sees a naive time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store UTC times from utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine_from_settings(settings: Settings) -> Engine:
    """An engine for the settings' database URL (SQLite: WAL mode, busy timeout, dir created)."""
    url = settings.resolved_database_url
    if _is_sqlite(url):
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL lets the API read while a worker writes; the API and workers share the file.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    # Pre-ping replaces a pooled connection the server dropped (a restart) before it is used;
    # the connect timeout turns an unreachable host into an error instead of a hang.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})


class Database:
    """An engine plus its session factory."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine_from_settings(settings)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def transaction(self, work: Callable[[Session], T], *, retry_s: float = 0.0) -> T:
        """``work(session)`` in one transaction, tried again with backoff for up to ``retry_s``
        seconds when the connection fails (`is_transient_db_error`): a restarted or failed-over
        database is waited for instead of failing the caller.

        ``work`` must be safe to run again after a rollback: each try is a new transaction, and
        the conditional UPDATEs of the job state machine are.
        """
        deadline = time.monotonic() + retry_s
        delay = _RETRY_FIRST_S
        while True:
            try:
                with self.session() as session:
                    return work(session)
            except Exception as exc:
                if not is_transient_db_error(exc) or time.monotonic() + delay > deadline:
                    raise
                logger.warning("database unreachable (%s); trying again in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def is_transient_db_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or dropped the connection (a
    restart, a failover, a busy SQLite file), as opposed to a statement it refused."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc.__cause__ or getattr(exc, "orig", None), sqlite3.OperationalError):
        # SQLite reports a bad statement ("no such column") as an OperationalError too; only a
        # file busy with another writer may clear by itself.
        return "locked" in str(exc) or "busy" in str(exc)
    return isinstance(exc, OperationalError | InterfaceError)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Brings the schema to ``revision``; safe to call from several processes at once."""
    engine = create_engine_from_settings(settings)
    url = settings.resolved_database_url
    try:
        if _is_sqlite(url):
            # SQLite has no advisory locks: serialise the API and worker processes on a lock file.
            lock_path = Path(settings.data_dir) / ".migrate.lock"
            # The lock is held until the migration has committed, so a second process sees
            # either no schema or the finished one.
            with open(lock_path, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    with engine.begin() as conn:
                        _run_upgrade(url, conn, revision, settings)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        else:
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
                _run_upgrade(url, conn, revision, settings)
    finally:
        engine.dispose()


def _run_upgrade(url: str, conn: Any, revision: str, settings: Settings) -> None:
    from service.artifacts import store_for

    config = alembic_config(url)
    config.attributes["connection"] = conn
    # Data migrations (0003 backfills each version's compile config) read the stored artifacts,
    # from whichever store the settings name.
    config.attributes["artifact_store"] = store_for(settings, "artifacts")
    config.attributes["artifact_root"] = settings.artifact_root
    command.upgrade(config, revision)
    logger.debug("database at %s upgraded to %s", url.split("@")[-1], revision)
