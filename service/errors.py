"""Every error class of the service and the workers, in one hierarchy.

Every error a client can see is a `SpectralError`: it carries an HTTP status, a stable
snake_case ``code`` and a human ``message``. The app factory registers one handler that turns
any of them into ``{"error": {"code", "message", "details"}}``; a job that fails with one
records its message. The domain raises them without knowing HTTP: the status is data.
"""

from __future__ import annotations

from typing import Any


class SpectralError(Exception):
    """Base class of every client-visible service error."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ModelNotFound(SpectralError):
    status_code = 404
    code = "model_not_found"


class VersionNotFound(SpectralError):
    status_code = 404
    code = "version_not_found"


class AliasNotFound(SpectralError):
    status_code = 404
    code = "alias_not_found"


class ReportNotFound(SpectralError):
    status_code = 404
    code = "report_not_found"


class ModelExists(SpectralError):
    status_code = 409
    code = "model_exists"


class InvalidInput(SpectralError):
    """A request body or parameter the service cannot act on (bad predict inputs, bad name)."""

    status_code = 422
    code = "invalid_input"


class ArtifactRejected(SpectralError):
    """An uploaded model file that is not a safe, loadable .keras archive."""

    status_code = 400
    code = "artifact_rejected"


class ArtifactLimitExceeded(ArtifactRejected):
    """An upload past a resource limit: the parameters it declares or has, its expanded size,
    or the memory, CPU or wall time of its sandboxed first load."""

    status_code = 422
    code = "artifact_limit_exceeded"


class UnsupportedMediaType(ArtifactRejected):
    status_code = 415
    code = "unsupported_media_type"


class PayloadTooLarge(SpectralError):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(SpectralError):
    status_code = 401
    code = "unauthorized"


class Forbidden(SpectralError):
    """A valid token whose scope does not allow the request (read-only, or a model name
    outside its patterns)."""

    status_code = 403
    code = "forbidden"


class RateLimited(SpectralError):
    """The caller's rate limit is spent; the response carries ``Retry-After``."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, details={"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s


class ArtifactCorrupted(SpectralError):
    """A stored artifact whose bytes no longer match their sha256."""

    status_code = 500
    code = "artifact_corrupted"


class InvalidJSON(InvalidInput):
    status_code = 400
    code = "invalid_json"


class DatasetRejected(SpectralError):
    status_code = 422
    code = "invalid_dataset"


class DatasetNotFound(SpectralError):
    status_code = 404
    code = "dataset_not_found"


class JobNotFound(SpectralError):
    status_code = 404
    code = "job_not_found"


class IdempotencyConflict(SpectralError):
    status_code = 409
    code = "idempotency_conflict"


class JobFinished(SpectralError):
    status_code = 409
    code = "job_finished"


class CompileConfigMissing(SpectralError):
    status_code = 422
    code = "compile_config_missing"


class JobInputError(SpectralError):
    """A job's inputs cannot work together (e.g. the dataset's shape against the model's)."""

    status_code = 422
    code = "invalid_job_input"


class BrokerUnavailable(SpectralError):
    status_code = 503
    code = "broker_unavailable"


class JobCancelled(Exception):
    """Raised inside a running job when a client asked to cancel it (never reaches a client)."""


class AliasConflict(SpectralError):
    """A compare-and-set alias move whose expected version is not the alias's current one.

    ``details["current_version"]`` is where the alias points now (null: it does not exist).
    """

    status_code = 409
    code = "alias_conflict"


class ArtifactStoreUnavailable(SpectralError):
    """The artifact store (bucket, endpoint or credentials) cannot be used right now."""

    status_code = 503
    code = "artifact_store_unavailable"
