"""The model registry: models, their immutable integer versions, and named aliases.

Every move of an alias (set, delete, a job's promotion, rollback) is written to `alias_events`
in the transaction that moves it, and each move is a compare-and-set on the version the alias
was read at, so two concurrent moves can never both believe they won.

Rows live in the database (tables and records: `service.versions`); the .keras bytes live in
the content-addressed artifact store (``<data_dir>/artifacts`` or an S3 bucket: see
`service.artifacts`). An upload is validated
completely before anything is written, so a rejected upload leaves no row and no file behind.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.artifacts import BlobStore, LocalStore, store_for
from service.db import Database, utcnow
from service.errors import (
    AliasConflict,
    AliasNotFound,
    InvalidInput,
    ModelExists,
    ModelNotFound,
    ReportNotFound,
    VersionNotFound,
)
from service.model_loading import inspect_artifact, load_model_bytes
from service.settings import Settings
from service.versions import (
    MAX_VERSION,
    AliasEvent,
    AliasEventRow,
    AliasRow,
    ModelRecord,
    ModelRow,
    VersionRecord,
    VersionRow,
)

logger = logging.getLogger(__name__)

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
_ADD_VERSION_ATTEMPTS = 8
_ALIAS_MOVE_ATTEMPTS = 8


class _AnyVersion:
    """The expectation of an unconditional move: whatever the alias points at now."""


ANY_VERSION = _AnyVersion()
"""Pass as ``expected`` to move an alias wherever it points now (still recorded exactly)."""


class _AliasRaced(Exception):
    """An unconditional move lost a race with another move between its read and its write."""


def check_slug(value: str, what: str) -> str:
    if not SLUG.fullmatch(value):
        raise InvalidInput(
            f"Invalid {what} {value!r}: expected lowercase letters, digits, '-' or '_' "
            "(1-100 characters, starting with a letter or digit)"
        )
    return value


class Registry:
    """Registry operations over a `Database` and a `BlobStore`.

    Args:
        database: Where the rows live (schema already upgraded).
        store: Where the .keras files and report images live.
    """

    def __init__(
        self,
        database: Database,
        store: BlobStore,
        inspect: Callable[[bytes], dict[str, Any]] = inspect_artifact,
    ) -> None:
        self.database = database
        self.store = store
        # Checks an artifact before it is stored and returns its metadata; from_settings binds
        # the limits of the settings to it.
        self.inspect = inspect

    @classmethod
    def from_settings(cls, settings: Settings, database: Database | None = None) -> Registry:
        return cls(
            database or Database(settings),
            store_for(settings, "artifacts"),
            inspect=partial(inspect_artifact, settings=settings),
        )

    # -- writes ---------------------------------------------------------------------------

    def create_model(
        self, name: str, data: bytes, *, serving: dict[str, Any] | None = None
    ) -> VersionRecord:
        """Registers a new model ``name`` with ``data`` as version 1; ``serving`` (batching
        limits, `service.serving.batch_limits`) is kept in its metadata.

        Raises:
            InvalidInput: ``name`` is not a slug.
            ModelExists: a model with that name exists.
            ArtifactRejected: ``data`` is not a safe .keras model.
        """
        check_slug(name, "model name")
        with self.database.session() as session:
            if session.get(ModelRow, name) is not None:
                raise ModelExists(f"Model {name!r} already exists; upload a new version instead")
        metadata = self.inspect(data)
        if serving:
            metadata["serving"] = serving
        sha256, size = self.store.put(data)
        now = utcnow()
        try:
            with self.database.session() as session:
                session.add(ModelRow(id=name, created_at=now))
                session.flush()
                row = self._new_version_row(name, 1, sha256, size, now, metadata)
                session.add(row)
                session.flush()
                record = VersionRecord.from_row(row)
        except IntegrityError as exc:
            # Another request created the same name between the check above and this insert.
            # The artifact file stays: a concurrent upload of the same bytes under another name
            # may reference it before it commits, and deleting it would break that version.
            raise ModelExists(f"Model {name!r} already exists") from exc
        logger.info("created model %s (sha256 %s, %d bytes)", name, sha256[:12], size)
        return record

    def add_version(
        self,
        model_id: str,
        data: bytes,
        *,
        parent_version: int | None = None,
        lineage: dict[str, Any] | None = None,
        job_id: str | None = None,
        report: dict[str, Any] | None = None,
        report_png: bytes | None = None,
        promote_alias: str | None = None,
        serving: dict[str, Any] | None = None,
    ) -> VersionRecord:
        """Adds the next version of ``model_id``; idempotent on ``job_id``.

        If a version made by ``job_id`` already exists it is returned unchanged, so a retried job
        never creates a second version (nor moves ``promote_alias`` again).

        Args:
            promote_alias: Point this alias at the new version in the same transaction that
                records it (a job's promotion gate passed), recorded as a "promotion" move.
            serving: Batching limits kept in the version's metadata; by default a version
                made from ``parent_version`` (a pruning job's) keeps its parent's.

        Raises:
            ModelNotFound: no such model.
            VersionNotFound: ``parent_version`` does not exist.
            ArtifactRejected: ``data`` is not a safe .keras model.
        """
        if job_id is not None:
            existing = self._by_job_id(job_id)
            if existing is not None:
                return existing
        with self.database.session() as session:
            self._require_model(session, model_id)
            if parent_version is not None:
                parent = self._require_version(session, model_id, parent_version)
                if serving is None:
                    serving = (parent.meta or {}).get("serving")
        metadata = self.inspect(data)
        if serving:
            metadata["serving"] = serving
        sha256, size = self.store.put(data)
        png_sha = self.store.put(report_png)[0] if report_png is not None else None
        for _ in range(_ADD_VERSION_ATTEMPTS):
            try:
                with self.database.session() as session:
                    latest = session.scalar(
                        select(func.max(VersionRow.version)).where(VersionRow.model_id == model_id)
                    )
                    row = self._new_version_row(
                        model_id, (latest or 0) + 1, sha256, size, utcnow(), metadata
                    )
                    row.parent_version = parent_version
                    row.lineage = lineage
                    row.job_id = job_id
                    row.report = report
                    row.report_png_sha256 = png_sha
                    session.add(row)
                    session.flush()
                    record = VersionRecord.from_row(row)
                    if promote_alias is not None:
                        _move_alias(
                            session,
                            model_id,
                            promote_alias,
                            record.version,
                            expected=ANY_VERSION,
                            reason="promotion",
                            job_id=job_id,
                        )
            except (IntegrityError, _AliasRaced):
                # Either the same job won the race (return its version), or another upload took
                # this version number, or another move of the promoted alias came in between
                # (try again: the version and its promotion are one transaction).
                if job_id is not None:
                    existing = self._by_job_id(job_id)
                    if existing is not None:
                        return existing
                continue
            logger.info("model %s: added version %d (job %s)", model_id, record.version, job_id)
            return record
        raise RuntimeError(f"Could not allocate a version number for {model_id!r}")

    def set_alias(
        self,
        model_id: str,
        alias: str,
        version: int,
        *,
        if_version: int | None = None,
        actor: str | None = None,
    ) -> AliasEvent:
        """Points ``alias`` at ``version`` (creating or moving it) and records the move.

        Args:
            if_version: Compare-and-set: move only if the alias points at this version now.
                None: move it wherever it points.

        Raises:
            InvalidInput: ``alias`` is not a slug.
            ModelNotFound, VersionNotFound: no such model or version.
            AliasConflict: ``if_version`` is given and the alias points elsewhere (or nowhere).
        """
        check_slug(alias, "alias")
        expected: int | None | _AnyVersion = ANY_VERSION if if_version is None else if_version

        def move(session: Session) -> AliasEvent:
            self._require_version(session, model_id, version)
            return _move_alias(
                session, model_id, alias, version, expected=expected, reason="set", actor=actor
            )

        return self._retry_alias_move(move)

    def delete_alias(self, model_id: str, alias: str, *, actor: str | None = None) -> AliasEvent:
        """Removes ``alias`` and records the move.

        Raises:
            ModelNotFound: no such model.
            AliasNotFound: the model has no such alias.
        """

        def move(session: Session) -> AliasEvent:
            self._require_model(session, model_id)
            return _move_alias(
                session, model_id, alias, None, expected=ANY_VERSION, reason="delete", actor=actor
            )

        return self._retry_alias_move(move)

    def rollback_alias(
        self,
        model_id: str,
        alias: str,
        *,
        if_version: int | None = None,
        actor: str | None = None,
    ) -> AliasEvent:
        """Moves ``alias`` back to where its latest move took it from; records a "rollback".

        Rolling back twice undoes the first rollback: the rollback is itself the latest move.

        Raises:
            ModelNotFound: no such model.
            AliasConflict: nothing to roll back to (no recorded move, or the latest move created
                the alias), ``if_version`` differs from the current version, or another move
                of the alias happened meanwhile.
        """
        try:
            return self._rollback_alias(model_id, alias, if_version, actor)
        except IntegrityError:
            # The alias was deleted, and another request created it while this one restored it.
            raise _conflict(model_id, alias, None, self.alias_version(model_id, alias)) from None

    def _rollback_alias(
        self, model_id: str, alias: str, if_version: int | None, actor: str | None
    ) -> AliasEvent:
        with self.database.session() as session:
            self._require_model(session, model_id)
            # Not locked: a rollback that waited on a concurrent one must see, when it moves,
            # that the alias is no longer where it was read here, and conflict, instead of
            # rolling back the other rollback.
            current = _alias_version(session, model_id, alias, lock=False)
            last = session.scalars(
                select(AliasEventRow)
                .where(
                    AliasEventRow.model_id == model_id,
                    AliasEventRow.alias == alias,
                    # Only moves that changed it: a PUT of the version it had is no move back.
                    AliasEventRow.from_version.is_distinct_from(AliasEventRow.to_version),
                )
                .order_by(AliasEventRow.id.desc())
                .limit(1)
            ).first()
            if last is None or last.from_version is None:
                what = "has no recorded move" if last is None else "was created by its last move"
                raise AliasConflict(
                    f"Alias {alias!r} of model {model_id!r} {what}: there is no previous "
                    "version to roll back to",
                    details={"current_version": current},
                )
            if if_version is not None and if_version != current:
                raise _conflict(model_id, alias, if_version, current)
            # Against the version read here: a concurrent move makes this one conflict instead
            # of rolling back a move it never saw.
            return _move_alias(
                session,
                model_id,
                alias,
                last.from_version,
                expected=current,
                reason="rollback",
                actor=actor,
            )

    def _retry_alias_move(self, move: Callable[[Session], AliasEvent]) -> AliasEvent:
        # An unconditional move that raced another one (its compare-and-set on the version it
        # read failed, or two sessions created the alias at once) reads again and retries.
        for _ in range(_ALIAS_MOVE_ATTEMPTS):
            try:
                with self.database.session() as session:
                    return move(session)
            except (_AliasRaced, IntegrityError):
                continue
        raise RuntimeError("Could not move the alias: too many concurrent moves")

    # -- reads ----------------------------------------------------------------------------

    def list_models(self) -> list[ModelRecord]:
        with self.database.session() as session:
            ids = session.scalars(select(ModelRow.id).order_by(ModelRow.id)).all()
            return [self._model_record(session, model_id) for model_id in ids]

    def get_model(self, model_id: str) -> ModelRecord:
        with self.database.session() as session:
            return self._model_record(session, model_id)

    def resolve(
        self, model_id: str, version: int | None = None, alias: str | None = None
    ) -> VersionRecord:
        """The version asked for: by number, by alias, or (neither given) the latest."""
        with self.database.session() as session:
            self._require_model(session, model_id)
            if version is None and alias is not None:
                alias_row = session.get(AliasRow, (model_id, alias))
                if alias_row is None:
                    raise AliasNotFound(f"Model {model_id!r} has no alias {alias!r}")
                version = alias_row.version
            if version is None:
                row = session.scalars(
                    select(VersionRow)
                    .where(VersionRow.model_id == model_id)
                    .order_by(VersionRow.version.desc())
                    .limit(1)
                ).first()
                if row is None:
                    raise VersionNotFound(f"Model {model_id!r} has no versions")
                return VersionRecord.from_row(row)
            return VersionRecord.from_row(self._require_version(session, model_id, version))

    def resolve_serving(self, model_id: str, alias: str) -> VersionRecord:
        """The version ``alias`` points at if the alias exists, else the latest (one query)."""
        with self.database.session() as session:
            row = session.scalars(
                select(VersionRow)
                .outerjoin(
                    AliasRow,
                    (AliasRow.model_id == VersionRow.model_id)
                    & (AliasRow.version == VersionRow.version)
                    & (AliasRow.alias == alias),
                )
                .where(VersionRow.model_id == model_id)
                # The aliased version first, then the newest.
                .order_by(AliasRow.alias.is_(None), VersionRow.version.desc())
                .limit(1)
            ).first()
            if row is None:
                self._require_model(session, model_id)
                raise VersionNotFound(f"Model {model_id!r} has no versions")
            return VersionRecord.from_row(row)

    def alias_history(
        self, model_id: str, alias: str, *, limit: int = 100, offset: int = 0
    ) -> list[AliasEvent]:
        """The alias's recorded moves, newest first (empty if it never existed).

        Raises:
            ModelNotFound: no such model.
        """
        with self.database.session() as session:
            self._require_model(session, model_id)
            rows = session.scalars(
                select(AliasEventRow)
                .where(AliasEventRow.model_id == model_id, AliasEventRow.alias == alias)
                .order_by(AliasEventRow.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            return [AliasEvent.from_row(row) for row in rows]

    def serving_generation(self) -> tuple[int, int, int]:
        """A cheap fingerprint of everything predict resolution reads: it changes whenever a
        model or version is added or an alias moves (every move writes an alias event)."""
        with self.database.session() as session:
            row = session.execute(
                select(
                    select(func.count()).select_from(ModelRow).scalar_subquery(),
                    select(func.count()).select_from(VersionRow).scalar_subquery(),
                    select(func.coalesce(func.max(AliasEventRow.id), 0)).scalar_subquery(),
                )
            ).one()
            return int(row[0]), int(row[1]), int(row[2])

    def alias_version(self, model_id: str, alias: str) -> int | None:
        with self.database.session() as session:
            row = session.get(AliasRow, (model_id, alias))
            return row.version if row is not None else None

    def artifact_path(self, record: VersionRecord) -> Path:
        """The version's file, for a local store only: everything else reads bytes
        (`read_artifact`), which works on every store."""
        if not isinstance(self.store, LocalStore):
            raise TypeError(f"artifact_path needs a local store. Received: {self.store!r}")
        return self.store.path(record.sha256)

    def read_artifact(self, record: VersionRecord) -> bytes:
        return self.store.read(record.sha256)

    def read_report_png(self, record: VersionRecord) -> bytes:
        if record.report_png_sha256 is None:
            raise ReportNotFound(
                f"Model {record.model_id!r} version {record.version} has no report image"
            )
        return self.store.read(record.report_png_sha256)

    def load_keras_model(self, record: VersionRecord) -> Any:
        """Loads the version's model after verifying its checksum (safe_mode on)."""
        return load_model_bytes(self.store.read(record.sha256))

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _new_version_row(
        model_id: str,
        version: int,
        sha256: str,
        size: int,
        created_at: datetime,
        metadata: dict[str, Any],
    ) -> VersionRow:
        return VersionRow(
            model_id=model_id,
            version=version,
            sha256=sha256,
            size_bytes=size,
            created_at=created_at,
            meta=metadata,
        )

    def _by_job_id(self, job_id: str) -> VersionRecord | None:
        with self.database.session() as session:
            row = session.scalars(select(VersionRow).where(VersionRow.job_id == job_id)).first()
            return VersionRecord.from_row(row) if row is not None else None

    @staticmethod
    def _require_model(session: Session, model_id: str) -> ModelRow:
        row = session.get(ModelRow, model_id)
        if row is None:
            raise ModelNotFound(f"No model named {model_id!r}")
        return row

    @staticmethod
    def _require_version(session: Session, model_id: str, version: int) -> VersionRow:
        Registry._require_model(session, model_id)
        # A number the version column cannot hold names no version; asking the database would
        # overflow its integer type (SQLite's int64, PostgreSQL's int4) instead of answering.
        if not 1 <= version <= MAX_VERSION:
            raise VersionNotFound(f"Model {model_id!r} has no version {version}")
        row = session.get(VersionRow, (model_id, version))
        if row is None:
            raise VersionNotFound(f"Model {model_id!r} has no version {version}")
        return row

    def _model_record(self, session: Session, model_id: str) -> ModelRecord:
        model = self._require_model(session, model_id)
        versions = session.scalars(
            select(VersionRow).where(VersionRow.model_id == model_id).order_by(VersionRow.version)
        ).all()
        aliases = session.scalars(select(AliasRow).where(AliasRow.model_id == model_id)).all()
        return ModelRecord(
            id=model.id,
            created_at=model.created_at,
            versions=[VersionRecord.from_row(v) for v in versions],
            aliases={a.alias: a.version for a in sorted(aliases, key=lambda a: a.alias)},
        )


# -- alias moves ----------------------------------------------------------------------------------


def _alias_version(session: Session, model_id: str, alias: str, *, lock: bool = True) -> int | None:
    # FOR UPDATE on PostgreSQL: a concurrent move waits for this transaction, then reads the
    # version it left. SQLite ignores it; there the conditional write below decides instead.
    query = select(AliasRow.version).where(AliasRow.model_id == model_id, AliasRow.alias == alias)
    return session.scalar(query.with_for_update() if lock else query)


def _conflict(
    model_id: str, alias: str, expected: int | None, current: int | None
) -> AliasConflict:
    now = "does not exist" if current is None else f"points at version {current}"
    wanted = "not to exist" if expected is None else f"to point at version {expected}"
    return AliasConflict(
        f"Alias {alias!r} of model {model_id!r} {now}; the request expected it {wanted}",
        details={"current_version": current},
    )


def _move_alias(
    session: Session,
    model_id: str,
    alias: str,
    to_version: int | None,
    *,
    expected: int | None | _AnyVersion,
    reason: str,
    job_id: str | None = None,
    actor: str | None = None,
) -> AliasEvent:
    """Moves (``to_version`` None: deletes) the alias and records the move, in ``session``.

    The write is conditional on the version read just before, so it is a compare-and-set on
    both databases.

    Raises:
        AliasConflict: ``expected`` is a version (or None: absent) and the alias is elsewhere.
        AliasNotFound: deleting an alias that does not exist.
        _AliasRaced: an unconditional move raced another one (the caller retries).
        IntegrityError: another session created the alias at the same moment.
    """
    current = _alias_version(session, model_id, alias)
    if not isinstance(expected, _AnyVersion) and expected != current:
        raise _conflict(model_id, alias, expected, current)
    if current is None:
        if to_version is None:
            raise AliasNotFound(f"Model {model_id!r} has no alias {alias!r}")
        session.add(AliasRow(model_id=model_id, alias=alias, version=to_version))
        session.flush()
    else:
        where = (
            AliasRow.model_id == model_id,
            AliasRow.alias == alias,
            AliasRow.version == current,
        )
        statement = (
            delete(AliasRow).where(*where)
            if to_version is None
            else update(AliasRow).where(*where).values(version=to_version)
        )
        result = session.execute(statement.execution_options(synchronize_session=False))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            if isinstance(expected, _AnyVersion):
                raise _AliasRaced()
            raise _conflict(model_id, alias, expected, _alias_version(session, model_id, alias))
    row = AliasEventRow(
        model_id=model_id,
        alias=alias,
        from_version=current,
        to_version=to_version,
        at=utcnow(),
        job_id=job_id,
        reason=reason,
        actor=actor,
    )
    session.add(row)
    session.flush()
    return AliasEvent.from_row(row)
