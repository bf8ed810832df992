"""Named aliases of model versions (e.g. ``production``): move, delete, history, rollback.

Every move is a compare-and-set in `service.registry` and is recorded there; these routes only
translate HTTP.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, status

from service.api.deps import RegistryDep, WriterDep, require_read
from service.api.schemas import (
    AliasEventPublic,
    AliasHistoryPublic,
    AliasPublic,
    AliasRollback,
    AliasUpdate,
)
from service.tokens import Principal

router = APIRouter(prefix="/models", tags=["aliases"])


def _actor(principal: Principal) -> str | None:
    """Who the history says moved the alias: the admin token, a scoped token's name, or
    nobody known (a server without tokens)."""
    if principal.token is not None:
        return principal.token.name
    return "admin" if principal.kind == "admin" else None


@router.put("/{model_id}/aliases/{alias}", response_model=AliasPublic)
def set_alias(
    model_id: str, alias: str, body: AliasUpdate, registry: RegistryDep, principal: WriterDep
) -> AliasPublic:
    """Points ``alias`` at a version (creating or moving it); with ``if_version``, only if the
    alias points at that version now (409 ``alias_conflict`` otherwise)."""
    registry.set_alias(
        model_id, alias, body.version, if_version=body.if_version, actor=_actor(principal)
    )
    return AliasPublic(model_id=model_id, alias=alias, version=body.version)


@router.delete("/{model_id}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
def delete_alias(model_id: str, alias: str, registry: RegistryDep, principal: WriterDep) -> None:
    registry.delete_alias(model_id, alias, actor=_actor(principal))


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


@router.post("/{model_id}/aliases/{alias}/rollback", response_model=AliasPublic)
def rollback_alias(
    model_id: str,
    alias: str,
    registry: RegistryDep,
    principal: WriterDep,
    body: Annotated[AliasRollback | None, Body()] = None,
) -> AliasPublic:
    """Moves the alias back to the version its latest move took it from (409
    ``alias_conflict`` when there is none)."""
    if_version = body.if_version if body is not None else None
    event = registry.rollback_alias(model_id, alias, if_version=if_version, actor=_actor(principal))
    assert event.to_version is not None  # a rollback always points the alias somewhere
    return AliasPublic(model_id=model_id, alias=alias, version=event.to_version)
