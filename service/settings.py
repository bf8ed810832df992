"""The one settings class shared by the API, the CLI and the workers (env prefix ``SPECTRAL_``)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # An empty variable means "use the default", as Compose's ${VAR:-} passes unset values.
    model_config = SettingsConfigDict(
        env_prefix="SPECTRAL_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    data_dir: Path = Field(
        default=Path("./spectral-data"),
        description="Directory holding the SQLite registry, artifacts, datasets and the "
        "embedded broker.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the registry database. Default: SQLite under data_dir.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL, e.g. redis://127.0.0.1:6379/0. Default: an embedded "
        "SQLite broker under data_dir that needs no server.",
    )
    host: str = Field(default="127.0.0.1", description="Interface the API binds to.")
    port: int = Field(default=8000, description="Port the API listens on.")
    api_workers: int = Field(default=1, description="Number of uvicorn worker processes.")
    max_upload_mb: float = Field(default=200.0, description="Largest accepted upload, in MiB.")
    max_batch: int = Field(default=1024, description="Largest batch accepted by predict.")
    max_request_mb: float = Field(
        default=32.0, description="Largest predict request body (JSON), in MiB; past it, 413."
    )
    model_cache_size: int = Field(
        default=8, description="How many loaded model versions the predict cache keeps."
    )
    batch_max_rows: int = Field(
        default=64,
        ge=1,
        description="Adaptive batching: most rows one forward pass coalesces from concurrent "
        "predict requests for the same version (a version's metadata may lower it).",
    )
    batch_max_delay_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="Adaptive batching: longest a request waits for others to share its forward "
        "pass, in ms; 0 coalesces only what is already waiting.",
    )
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        BeforeValidator(lambda value: value.upper() if isinstance(value, str) else value),
    ] = Field(
        default="INFO",
        description="Level of the API's log (any case); INFO includes the access log's line "
        "per request.",
    )
    access_log: bool = Field(
        default=True,
        description="One plain-text log line per HTTP request (uvicorn's access log); false "
        "drops it, as high-traffic deployments that log at the gateway do.",
    )
    serving_refresh_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Predict resolves (model, alias) from memory; other API processes' alias "
        "moves and new versions are seen within this many seconds.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="The admin bearer token (every model, every operation). When it or "
        "tokens_file is set, writes need a token.",
    )
    protect_reads: bool = Field(
        default=False, description="Also require a bearer token (admin or scoped) for reads."
    )
    tokens_file: Path | None = Field(
        default=None,
        description="TOML or JSON file of scoped tokens (sha256, read/write, model names or "
        "prefixes); see service/tokens.py. With it, writes need a token even without api_token.",
    )
    rate_limit_writes_per_min: float | None = Field(
        default=None,
        gt=0,
        description="Writes each caller (token, or address when anonymous) may make per minute; "
        "past it, 429 with Retry-After. Unset: no limit. Counted per API process.",
    )
    rate_limit_predicts_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Predict requests each caller may make per second; past it, 429 with "
        "Retry-After. Unset: no limit. Counted per API process.",
    )
    max_json_depth: int = Field(
        default=32,
        ge=2,
        le=200,
        description="Deepest nesting of arrays/objects accepted in a JSON body or query; past "
        "it, 400.",
    )
    max_json_number_chars: int = Field(
        default=100,
        ge=20,
        le=4000,
        description="Longest number literal accepted in a JSON body or query, in characters; "
        "past it, 400 (Python refuses integers past 4300 digits).",
    )
    default_queue: str = Field(default="spectral", description="Celery queue for pruning jobs.")
    queue_routes: dict[str, str] = Field(
        default_factory=dict,
        description='Per-method queue overrides, e.g. {"metric": "gpu", "pretrain": "gpu"} '
        "(JSON in SPECTRAL_QUEUE_ROUTES).",
    )
    job_soft_time_limit_s: int = Field(
        default=1800, description="Soft time limit of a pruning job, in seconds."
    )
    job_time_limit_s: int = Field(
        default=1900, description="Hard time limit of a pruning job, in seconds."
    )
    job_max_attempts: int = Field(
        default=3, description="How many times a job may start before it is marked failed."
    )
    embedded_worker: bool = Field(
        default=True, description="`spectral serve` also starts one worker process."
    )
    broker_polling_interval_s: float = Field(
        default=0.1,
        description="How often a worker polls the embedded SQLite broker for new jobs, in seconds.",
    )
    job_heartbeat_s: float = Field(
        default=5.0, description="How often a running job records that it is alive, in seconds."
    )
    job_lease_s: float = Field(
        default=60.0,
        description="A running job whose last heartbeat is older than this is considered lost "
        "and is re-queued (or failed once job_max_attempts is reached), in seconds.",
    )
    artifact_url: str | None = Field(
        default=None,
        description="Where artifacts, datasets and report images are stored: a local directory "
        "(default: under data_dir) or s3://bucket/prefix (endpoint, region and credentials from "
        "the standard AWS_* variables).",
    )
    job_shutdown_s: float = Field(
        default=25.0,
        gt=0,
        description="On SIGTERM, how long a worker lets its running job go on before it "
        "releases it back to the queue, in seconds.",
    )
    max_dataset_mb: float = Field(
        default=200.0, description="Largest accepted dataset upload (.npz), in MiB."
    )
    max_params: int = Field(
        default=50_000_000,
        ge=1,
        description="Most parameters an uploaded model may declare; past it the upload gets 422.",
    )
    sandbox_memory_mb: int = Field(
        default=2048,
        ge=64,
        description="Address-space limit of the short-lived process that first loads an "
        "uploaded model, in MiB.",
    )
    sandbox_cpu_s: int = Field(
        default=60, ge=1, description="CPU-time limit of that process, in seconds."
    )
    sandbox_wall_s: float = Field(
        default=120.0, gt=0, description="Wall-clock limit of that process, in seconds."
    )
    # chaos/resilience
    db_retry_s: float = Field(
        default=30.0,
        ge=0,
        description="A worker retries a job transition (claim, progress, finish) whose database "
        "connection dropped, with backoff, for up to this many seconds; covers a database "
        "restart or failover.",
    )
    job_transient_retries: int = Field(
        default=5,
        ge=0,
        description="How many times a job is re-run in the same attempt, with backoff, after a "
        "transient fault (artifact store or database unreachable); the attempt is not counted.",
    )
    job_transient_backoff_s: float = Field(
        default=1.0,
        ge=0,
        description="First wait before re-running a job after a transient fault, in seconds; "
        "doubled each time, at most 30 s.",
    )
    job_resend_queued_s: float = Field(
        default=60.0,
        gt=0,
        description="The workers send the message of a job queued for longer than this again "
        "(at most once per this period and worker), in seconds: a message lost with a broker "
        "restart, or never sent by an API that died after recording the job, is not waited "
        "for forever. A duplicate message is harmless.",
    )
    broker_visibility_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Redis broker: re-deliver an unacknowledged message after this many seconds "
        "(default: longer than job_time_limit_s). Set small only in tests: a re-delivery of a "
        "running job is ignored, but costs a message.",
    )
    test_crash_after_job_row: bool = Field(
        default=False,
        description="TEST ONLY: the API process exits right after recording a job, before "
        "sending its message (the chaos tests' fault). Never set it in production.",
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        """Where model artifacts and report images are stored, by sha256."""
        return Path(self.data_dir) / "artifacts"

    @property
    def dataset_root(self) -> Path:
        """Where uploaded datasets are stored, by sha256."""
        return Path(self.data_dir) / "datasets"

    @property
    def all_queues(self) -> list[str]:
        """The default queue plus every routed one: what a lone (embedded) worker consumes."""
        routed = set(self.queue_routes.values()) - {self.default_queue}
        return [self.default_queue, *sorted(routed)]

    def queue_for(self, method: str) -> str:
        """The queue a job of this method goes to (``queue_routes``, else the default)."""
        return self.queue_routes.get(method, self.default_queue)

    def to_env(self) -> dict[str, str]:
        """``SPECTRAL_*`` variables that rebuild these settings in another process."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value: Any = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, dict | list):
                text = json.dumps(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"SPECTRAL_{name.upper()}"] = text
        return env

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_dataset_bytes(self) -> int:
        return int(self.max_dataset_mb * 1024 * 1024)


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, read once from the environment (the worker's source).

    The API does not use it: `create_app` takes its settings as an argument.
    """
    return Settings()
