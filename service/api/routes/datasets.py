"""Datasets: upload an ``.npz`` with arrays ``x`` and ``y`` for metric-based pruning jobs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Response, UploadFile

from service import datasets
from service.deps import RegistryDep, SettingsDep, require_read, require_write
from service.errors import PayloadTooLarge

router = APIRouter(prefix="/datasets", tags=["datasets"])

_CHUNK = 1 << 20


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"Dataset is larger than the {limit / 2**20:g} MiB limit (max_dataset_mb)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "",
    status_code=201,
    response_model=datasets.DatasetPublic,
    dependencies=[Depends(require_write)],
)
async def upload_dataset(
    registry: RegistryDep,
    settings: SettingsDep,
    response: Response,
    file: UploadFile = File(description=".npz archive with arrays x and y"),
) -> datasets.DatasetPublic:
    data = await _read_limited(file, settings.max_dataset_bytes)
    with registry.database.session() as session:
        dataset, created = datasets.create_dataset(
            session,
            datasets.dataset_store(settings),
            data,
            max_bytes=settings.max_dataset_bytes,
            filename=file.filename,
        )
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/datasets/{dataset.id}"
    return dataset


@router.get(
    "/{dataset_id}",
    response_model=datasets.DatasetPublic,
    dependencies=[Depends(require_read)],
)
def read_dataset(dataset_id: str, registry: RegistryDep) -> datasets.DatasetPublic:
    with registry.database.session() as session:
        return datasets.get_dataset(session, dataset_id)
