"""Named aliases of model versions (e.g. ``production``): move, delete, history, rollback.

Every move is a compare-and-set in `service.registry` and is recorded there; these routes only
translate HTTP.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, status

from service.api.deps import RegistryDep, require_read, require_write
from service.api.schemas import (
    AliasEventPublic,
    AliasHistoryPublic,
    AliasPublic,
    AliasRollback,
    AliasUpdate,
)

router = APIRouter(prefix="/models", tags=["aliases"])


@router.put(
    "/{model_id}/aliases/{alias}",
    response_model=AliasPublic,
    dependencies=[Depends(require_write)],
)
def set_alias(model_id: str, alias: str, body: AliasUpdate, registry: RegistryDep) -> AliasPublic:
    """Points ``alias`` at a version (creating or moving it); with ``if_version``, only if the
    alias points at that version now (409 ``alias_conflict`` otherwise)."""
    registry.set_alias(model_id, alias, body.version, if_version=body.if_version)
    return AliasPublic(model_id=model_id, alias=alias, version=body.version)


@router.delete(
    "/{model_id}/aliases/{alias}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(require_write)],
)
def delete_alias(model_id: str, alias: str, registry: RegistryDep) -> None:
    registry.delete_alias(model_id, alias)


@router.get(
    "/{model_id}/aliases/{alias}/history",
    response_model=AliasHistoryPublic,
    dependencies=[Depends(require_read)],
)
def alias_history(
    model_id: str,
    alias: str,
    registry: RegistryDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    # Bounded so the database is never handed an offset its integer type overflows on.
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> AliasHistoryPublic:
    """The alias's moves, newest first: from and to which version, when, by which job."""
    events = registry.alias_history(model_id, alias, limit=limit, offset=offset)
    return AliasHistoryPublic(
        data=[AliasEventPublic.from_record(event) for event in events], count=len(events)
    )


@router.post(
    "/{model_id}/aliases/{alias}/rollback",
    response_model=AliasPublic,
    dependencies=[Depends(require_write)],
)
def rollback_alias(
    model_id: str,
    alias: str,
    registry: RegistryDep,
    body: Annotated[AliasRollback | None, Body()] = None,
) -> AliasPublic:
    """Moves the alias back to the version its latest move took it from (409
    ``alias_conflict`` when there is none)."""
    if_version = body.if_version if body is not None else None
    event = registry.rollback_alias(model_id, alias, if_version=if_version)
    assert event.to_version is not None  # a rollback always points the alias somewhere
    return AliasPublic(model_id=model_id, alias=alias, version=event.to_version)
