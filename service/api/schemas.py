"""Request and response bodies of the HTTP API, in families per resource.

The wire format shared by the server and its Python client: at run time it imports pydantic
and `service.jobs.params` only (a test checks it in a fresh interpreter).

``POST /prune`` takes the domain's own `service.jobs.params.PruneRequest` as its body, so the
API and the worker validate job parameters with one class.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.jobs.params import MAX_VERSION, JobStatus, Method

if TYPE_CHECKING:
    # Only the converters' signatures name the tables: at run time this module needs pydantic
    # alone, so the HTTP client (`service.client`) shares these classes without SQLAlchemy.
    from service.datasets import Dataset
    from service.jobs.table import Job
    from service.versions import AliasEvent, ModelRecord, VersionRecord


class TensorSpec(BaseModel):
    name: str | None
    shape: list[int | None]
    dtype: str


class SpectralLayerPublic(BaseModel):
    name: str
    units: int


class VersionPublic(BaseModel):
    """One model version: what it accepts and returns, its size, checksum and origin."""

    id: str = Field(description="The model's id (its name).")
    model_id: str
    version: int
    sha256: str
    size_bytes: int
    created_at: datetime
    parent_version: int | None
    lineage: dict[str, Any] | None = Field(
        description="How this version was made when a job produced it: job_id, method, params."
    )
    job_id: str | None
    has_report: bool
    has_report_png: bool
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    param_count: int
    spectral_layers: list[SpectralLayerPublic]
    spectral_units: int
    serving: dict[str, Any] = Field(
        default_factory=dict,
        description="This version's own batching limits (max_batch_size rows, max_delay_ms), "
        "set at upload or kept from the version a job pruned; empty: the server's defaults.",
    )

    @classmethod
    def from_record(cls, record: VersionRecord) -> VersionPublic:
        meta = record.metadata
        return cls(
            id=record.model_id,
            model_id=record.model_id,
            version=record.version,
            sha256=record.sha256,
            size_bytes=record.size_bytes,
            created_at=record.created_at,
            parent_version=record.parent_version,
            lineage=record.lineage,
            job_id=record.job_id,
            has_report=record.report is not None,
            has_report_png=record.report_png_sha256 is not None,
            inputs=[TensorSpec(**spec) for spec in meta.get("inputs", [])],
            outputs=[TensorSpec(**spec) for spec in meta.get("outputs", [])],
            param_count=meta.get("param_count", 0),
            spectral_layers=[SpectralLayerPublic(**s) for s in meta.get("spectral_layers", [])],
            spectral_units=meta.get("spectral_units", 0),
            serving=meta.get("serving") or {},
        )


class VersionsPublic(BaseModel):
    data: list[VersionPublic]
    count: int


class ModelPublic(BaseModel):
    id: str
    created_at: datetime
    latest_version: int | None
    aliases: dict[str, int]
    versions: list[VersionPublic]

    @classmethod
    def from_record(cls, record: ModelRecord) -> ModelPublic:
        return cls(
            id=record.id,
            created_at=record.created_at,
            latest_version=record.latest_version,
            aliases=record.aliases,
            versions=[VersionPublic.from_record(v) for v in record.versions],
        )


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class AliasUpdate(BaseModel):
    """Body of ``PUT /models/{id}/aliases/{alias}``."""

    version: int = Field(
        ge=1, le=MAX_VERSION, description="The version the alias points at afterwards."
    )
    if_version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_VERSION,
        description="Compare-and-set: move the alias only if it points at this version now "
        "(409 alias_conflict with details.current_version otherwise). Null: move it regardless.",
    )


class AliasRollback(BaseModel):
    """Optional body of ``POST /models/{id}/aliases/{alias}/rollback``."""

    if_version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_VERSION,
        description="Roll back only if the alias points at this version now (409 otherwise).",
    )


class AliasPublic(BaseModel):
    model_id: str
    alias: str
    version: int


AliasReason = Literal["set", "delete", "promotion", "rollback"]


class AliasEventPublic(BaseModel):
    """One move of an alias: from which version to which, when, and by what."""

    model_id: str
    alias: str
    from_version: int | None = Field(description="Null when the move created the alias.")
    to_version: int | None = Field(description="Null when the move deleted the alias.")
    at: datetime
    job_id: str | None = Field(description="The job whose promotion moved it, if a job did.")
    reason: AliasReason
    actor: str | None = Field(default=None, description="Who moved it, when known.")

    @classmethod
    def from_record(cls, event: AliasEvent) -> AliasEventPublic:
        # The record's fields are these fields, by name.
        return cls.model_validate(event, from_attributes=True)


class AliasHistoryPublic(BaseModel):
    """An alias's moves, newest first."""

    data: list[AliasEventPublic]
    count: int


class PredictRequest(BaseModel):
    inputs: Any = Field(
        description="A batch as nested lists (one-input models), or an object keyed by input "
        "name whose values are batches (multi-input models)."
    )


class PredictResponse(BaseModel):
    model_id: str
    version: int
    outputs: Any = Field(
        description="Nested lists (one-output models) or an object keyed by output name."
    )


class DatasetPublic(BaseModel):
    id: str
    sha256: str
    size_bytes: int
    filename: str | None
    x_shape: list[int]
    y_shape: list[int]
    x_dtype: str
    y_dtype: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: Dataset) -> DatasetPublic:
        return cls(
            id=row.id,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            filename=row.filename,
            x_shape=list(row.x_shape),
            y_shape=list(row.y_shape),
            x_dtype=row.x_dtype,
            y_dtype=row.y_dtype,
            created_at=row.created_at,
        )


class Promotion(BaseModel):
    """What the promotion gate of a job decided (``POST /prune`` with ``promote``)."""

    alias: str
    promoted: bool = Field(description="Whether the alias now points at the job's version.")
    reason: str = Field(description="Why, with the numbers.")
    metric: str
    metric_before: float | None = Field(description="The parent version's metric on the dataset.")
    metric_after: float | None = Field(description="The new version's metric on the dataset.")
    max_drop_percent: float


class JobResult(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    version: int
    promotion: Promotion | None = None


class JobPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    status: JobStatus
    model_id: str
    version: int
    method: Method
    params: dict[str, Any]
    dataset_id: str | None
    queue: str
    progress: float
    step: str
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: JobResult | None
    report: dict[str, Any] | None
    error: str | None

    @classmethod
    def from_row(cls, job: Job) -> JobPublic:
        result = None
        if job.result_version is not None:
            # The worker records the gate's decision with the job's report (see worker.runner).
            promotion = (job.report or {}).get("promotion")
            result = JobResult(
                model_id=job.model_id,
                version=job.result_version,
                promotion=Promotion.model_validate(promotion) if promotion else None,
            )
        return cls(
            id=job.id,
            status=job.status,  # type: ignore[arg-type]
            model_id=job.model_id,
            version=job.version,
            method=job.method,  # type: ignore[arg-type]
            params=job.params,
            dataset_id=job.dataset_id,
            queue=job.queue,
            progress=job.progress,
            step=job.step,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            result=result,
            report=job.report,
            error=job.error,
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# -- serving protocols: Open Inference V2 and TF Serving (documented here; the routes parse
# their bodies with orjson, see service/api/protocols) ---------------------------------------


class ProtocolErrorBody(BaseModel):
    """The error body of the V2 and TF Serving routes (``/v2``, ``/v1``)."""

    error: str


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="FP32, FP64, FP16, INT8..64, UINT8..64 or BOOL.")
    shape: list[int] = Field(description="-1 for a dimension of any size (the batch).")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: the tensor's bytes follow the JSON."
    )
    data: list[Any] | None = Field(default=None, description="Row-major, flat or nested.")


class V2RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data: true returns this output as raw bytes."
    )


class V2InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_output: true returns every output as raw bytes."
    )
    inputs: list[V2RequestInput]
    outputs: list[V2RequestOutput] | None = None


class V2ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2ResponseOutput]


class TFServingPredictRequest(BaseModel):
    signature_name: str | None = Field(default=None, description="Only 'serving_default'.")
    instances: list[Any] | None = Field(
        default=None, description="Row format: one item per batch row (objects by input name)."
    )
    inputs: Any = Field(
        default=None, description="Columnar format: the batch, or an object by input name."
    )


class TFServingPredictResponse(BaseModel):
    predictions: list[Any] | None = None
    outputs: Any = None


class TFServingStatus(BaseModel):
    error_code: str
    error_message: str


class TFServingVersionStatus(BaseModel):
    version: str
    state: str
    status: TFServingStatus


class TFServingModelStatus(BaseModel):
    model_version_status: list[TFServingVersionStatus]


class TFServingMetadata(BaseModel):
    model_spec: dict[str, Any]
    metadata: dict[str, Any]
