"""Datasets: upload an ``.npz`` with arrays ``x`` and ``y`` for metric-based pruning jobs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Response, UploadFile

from service import datasets
from service.api.deps import RegistryDep, SettingsDep, require_read, require_write
from service.api.limits import MULTIPART_OVERHEAD, body_limit, read_upload
from service.api.schemas import DatasetPublic

router = APIRouter(
    prefix="/datasets",
    tags=["datasets"],
    route_class=body_limit("max_dataset_bytes", overhead=MULTIPART_OVERHEAD),
)


@router.post(
    "", status_code=201, response_model=DatasetPublic, dependencies=[Depends(require_write)]
)
def upload_dataset(
    registry: RegistryDep,
    settings: SettingsDep,
    response: Response,
    file: UploadFile = File(description=".npz archive with arrays x and y"),
) -> DatasetPublic:
    """Stores the dataset (201), or answers 200 with the existing one for the same bytes."""
    data = read_upload(file, settings.max_dataset_bytes)
    dataset, created = datasets.store_upload(registry.database, settings, data, file.filename)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/datasets/{dataset.id}"
    return DatasetPublic.from_row(dataset)


@router.get("/{dataset_id}", response_model=DatasetPublic, dependencies=[Depends(require_read)])
def read_dataset(dataset_id: str, registry: RegistryDep) -> DatasetPublic:
    with registry.database.session() as session:
        return DatasetPublic.from_row(datasets.get_dataset(session, dataset_id))
