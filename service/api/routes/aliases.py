"""Named aliases of model versions (e.g. ``production``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status

from service.api.deps import RegistryDep, require_write
from service.api.schemas import AliasPublic, AliasUpdate

router = APIRouter(prefix="/models", tags=["aliases"], dependencies=[Depends(require_write)])


@router.put("/{model_id}/aliases/{alias}", response_model=AliasPublic)
def set_alias(model_id: str, alias: str, body: AliasUpdate, registry: RegistryDep) -> AliasPublic:
    """Points ``alias`` at a version (creating or moving it)."""
    registry.set_alias(model_id, alias, body.version)
    return AliasPublic(model_id=model_id, alias=alias, version=body.version)


@router.delete("/{model_id}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
def delete_alias(model_id: str, alias: str, registry: RegistryDep) -> None:
    registry.delete_alias(model_id, alias)
