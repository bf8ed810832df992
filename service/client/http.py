"""`Client`: the registry's HTTP API as typed methods, on httpx.

Answers are the server's own pydantic models (`service.api.schemas`), and job requests are the
server's `PruneRequest`, so a field the server adds or renames shows up here without copying.
Transient failures are retried with exponential backoff, a bounded number of times:

- a refused or failed connection, for every request: the request never reached the server;
- 502, 503 and 504 for the requests that are safe to repeat: reads, alias moves with PUT, and
  job submissions, which carry an ``Idempotency-Key`` (one per submission, kept across its
  retries) so a retried submission never makes a second job.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from service.api.schemas import (
    AliasHistoryPublic,
    AliasPublic,
    DatasetPublic,
    JobAccepted,
    JobPublic,
    JobsPublic,
    ModelPublic,
    ModelsPublic,
    VersionPublic,
)
from service.client.errors import ApiError, ServerUnavailable, WaitTimeout
from service.jobs.params import JobStatus, PruneRequest

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
RETRIED_STATUSES = frozenset({502, 503, 504})
_SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})

Model = TypeVar("Model", bound=BaseModel)
ProgressCallback = Callable[[JobPublic], None]


class Client:
    """The spectral registry API.

    Args:
        url: The server's base URL; default ``$SPECTRAL_URL``, else ``http://127.0.0.1:8000``.
        token: Sent as ``Authorization: Bearer <token>``; default ``$SPECTRAL_API_TOKEN``.
        timeout: Seconds for each request (uploads and downloads included).
        retries: How many times a transient failure is retried before giving up.
        backoff: Seconds before the first retry; doubled each time, at most 8 s.
        transport: An httpx transport, for tests.

    Example:
        ```python
        from service.client import Client

        client = Client("http://127.0.0.1:8000")
        version = client.push_model("digits.keras", name="digits")
        dataset = client.push_dataset("digits.npz")
        accepted = client.submit(
            model_id="digits", method="metric", dataset_id=dataset.id,
            promote={"alias": "production", "max_drop_percent": 1.0},
        )
        job = client.wait(accepted.job_id, progress=lambda job: print(job.step))
        ```

    Raises (every method):
        ApiError: the server answered 4xx, or 5xx after the retries.
        ServerUnavailable: the server could not be reached after the retries.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("SPECTRAL_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("SPECTRAL_API_TOKEN")
        if retries < 0:
            raise ValueError(f"retries must be >= 0. Received: retries={retries}")
        self.retries = retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- models and versions -----------------------------------------------------------------

    def models(self) -> ModelsPublic:
        return self._get(ModelsPublic, "/models")

    def model(self, name: str) -> ModelPublic:
        """The model with its versions, aliases and latest version."""
        return self._get(ModelPublic, f"/models/{name}")

    def version(self, name: str, version: int) -> VersionPublic:
        return self._get(VersionPublic, f"/models/{name}/versions/{version}")

    def push_model(
        self,
        path: str | Path,
        name: str,
        *,
        max_batch_size: int | None = None,
        max_delay_ms: float | None = None,
    ) -> VersionPublic:
        """Uploads a ``.keras`` file: a new model ``name`` (version 1), or its next version.

        ``max_batch_size`` and ``max_delay_ms`` set the version's own adaptive batching limits
        (default: the server's)."""
        path = Path(path)
        exists = self._exists(f"/models/{name}")
        limits: dict[str, Any] = {}
        if max_batch_size is not None:
            limits["max_batch_size"] = str(max_batch_size)
        if max_delay_ms is not None:
            limits["max_delay_ms"] = str(max_delay_ms)
        with path.open("rb") as file:
            files = {"file": (path.name, file, "application/octet-stream")}
            try:
                if not exists:
                    response = self._request(
                        "POST", "/models", files=files, data={"name": name, **limits}
                    )
                    return VersionPublic.model_validate(response.json())
            except ApiError as error:
                # Another pipeline created it between the two requests: this is its next version.
                if error.code != "model_exists":
                    raise
            response = self._request("POST", f"/models/{name}/versions", files=files, data=limits)
        return VersionPublic.model_validate(response.json())

    def resolve(self, name: str, *, version: int | None = None, alias: str | None = None) -> int:
        """The version number ``version``, ``alias`` or (neither) the latest one names."""
        if version is not None and alias is not None:
            raise ValueError("give either version or alias, not both")
        if version is not None:
            return version
        model = self.model(name)
        if alias is not None:
            if alias not in model.aliases:
                raise ApiError(
                    404,
                    "alias_not_found",
                    f"Model {name!r} has no alias {alias!r} (aliases: {sorted(model.aliases)})",
                )
            return model.aliases[alias]
        if model.latest_version is None:
            raise ApiError(404, "version_not_found", f"Model {name!r} has no versions")
        return model.latest_version

    def download(self, name: str, version: int) -> bytes:
        """The exact bytes of a version's ``.keras`` artifact."""
        return self._request("GET", f"/models/{name}/versions/{version}/artifact").content

    def pull(
        self,
        name: str,
        path: str | Path,
        *,
        version: int | None = None,
        alias: str | None = None,
    ) -> int:
        """Writes a version's artifact to ``path`` (atomically); returns the version number."""
        number = self.resolve(name, version=version, alias=alias)
        data = self.download(name, number)
        path = Path(path)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        partial.write_bytes(data)
        partial.replace(path)
        return number

    def report(self, name: str, version: int) -> dict[str, Any]:
        """The pruning report of a version a job made (units, params, metric, size, latency)."""
        return dict(self._request("GET", f"/models/{name}/versions/{version}/report").json())

    def report_png(self, name: str, version: int) -> bytes:
        return self._request("GET", f"/models/{name}/versions/{version}/report.png").content

    # -- aliases -----------------------------------------------------------------------------

    def set_alias(
        self, name: str, alias: str, version: int, *, if_version: int | None = None
    ) -> AliasPublic:
        """Points ``alias`` at ``version``; with ``if_version``, only if it points there now
        (ApiError 409 ``alias_conflict`` with ``details["current_version"]`` otherwise)."""
        body = {"version": version, "if_version": if_version}
        return self._send(AliasPublic, "PUT", f"/models/{name}/aliases/{alias}", json=body)

    def delete_alias(self, name: str, alias: str) -> None:
        self._request("DELETE", f"/models/{name}/aliases/{alias}")

    def alias_history(
        self, name: str, alias: str, *, limit: int = 100, offset: int = 0
    ) -> AliasHistoryPublic:
        """The alias's moves, newest first, each with its reason and job."""
        return self._get(
            AliasHistoryPublic,
            f"/models/{name}/aliases/{alias}/history",
            params={"limit": limit, "offset": offset},
        )

    def rollback(self, name: str, alias: str, *, if_version: int | None = None) -> AliasPublic:
        """Moves ``alias`` back to where its latest move took it from."""
        path = f"/models/{name}/aliases/{alias}/rollback"
        # Not retried on 5xx: a rollback that went through once must not roll back twice.
        return self._send(AliasPublic, "POST", path, json={"if_version": if_version})

    # -- datasets ----------------------------------------------------------------------------

    def push_dataset(self, path: str | Path) -> DatasetPublic:
        """Uploads an ``.npz`` with arrays ``x`` and ``y``; the same bytes give the same id."""
        path = Path(path)
        with path.open("rb") as file:
            files = {"file": (path.name, file, "application/octet-stream")}
            response = self._request("POST", "/datasets", files=files)
        return DatasetPublic.model_validate(response.json())

    def dataset(self, dataset_id: str) -> DatasetPublic:
        return self._get(DatasetPublic, f"/datasets/{dataset_id}")

    # -- jobs --------------------------------------------------------------------------------

    def submit(
        self,
        request: PruneRequest | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> JobAccepted:
        """Submits a pruning job (``POST /prune``): a `PruneRequest`, or its fields.

        The request is validated here with the server's own class, so a bad combination fails
        before anything is sent (pydantic's ValidationError). ``idempotency_key`` defaults to
        a fresh one, so retries of this call never make two jobs.
        """
        if request is None:
            request = PruneRequest.model_validate(fields)
        elif fields:
            raise ValueError("give either a PruneRequest or its fields, not both")
        body = request.model_dump(mode="json", exclude_unset=True)
        headers = {"Idempotency-Key": idempotency_key or f"spectral-client-{uuid.uuid4().hex}"}
        response = self._request("POST", "/prune", json=body, headers=headers, idempotent=True)
        return JobAccepted.model_validate(response.json())

    def job(self, job_id: str) -> JobPublic:
        return self._get(JobPublic, f"/jobs/{job_id}")

    def jobs(
        self,
        *,
        model_id: str | None = None,
        status: JobStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> JobsPublic:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if model_id is not None:
            params["model_id"] = model_id
        if status is not None:
            params["status"] = status
        return self._get(JobsPublic, "/jobs", params=params)

    def cancel(self, job_id: str) -> JobPublic:
        """A queued job never starts; a running one stops at its next step."""
        return self._send(JobPublic, "POST", f"/jobs/{job_id}/cancel")

    def wait(
        self,
        job_id: str,
        *,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        poll_s: float = 0.5,
    ) -> JobPublic:
        """Polls the job until it succeeds, fails or is cancelled, and returns it.

        Args:
            job_id: The job.
            progress: Called with the job after each poll (its ``progress`` and ``step``).
            timeout: Seconds to wait at most; None waits as long as it takes.
            poll_s: Seconds between polls.

        Raises:
            WaitTimeout: ``timeout`` passed first; the job goes on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if progress is not None:
                progress(job)
            if job.status in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job_id, timeout or 0.0, job.status)
            pause = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
            time.sleep(max(pause, 0.0))

    # -- transport ---------------------------------------------------------------------------

    def _get(self, model: type[Model], path: str, **kwargs: Any) -> Model:
        return model.model_validate(self._request("GET", path, **kwargs).json())

    def _send(self, model: type[Model], method: str, path: str, **kwargs: Any) -> Model:
        return model.model_validate(self._request(method, path, **kwargs).json())

    def _exists(self, path: str) -> bool:
        try:
            self._request("GET", path)
        except ApiError as error:
            if error.status_code == 404:
                return False
            raise
        return True

    def _request(
        self, method: str, path: str, *, idempotent: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Sends one request, retrying transient failures; raises ApiError on an error answer."""
        repeatable = idempotent or method in _SAFE_METHODS
        attempt = 0
        while True:
            attempt += 1
            _rewind(kwargs.get("files"))
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                # Only a failed connect proves the request never arrived; anything later may
                # have been acted on, so it is repeated only when repeating is safe.
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt <= self.retries and (never_sent or repeatable):
                    self._sleep(attempt)
                    continue
                raise ServerUnavailable(self.url, _describe(exc), attempt) from exc
            if response.status_code in RETRIED_STATUSES and repeatable:
                if attempt <= self.retries:
                    self._sleep(attempt)
                    continue
            if response.is_error:
                raise _api_error(response)
            return response

    def _sleep(self, attempt: int) -> None:
        time.sleep(min(self.backoff * 2 ** (attempt - 1), 8.0))


def _rewind(files: Any) -> None:
    """Uploads are file objects: a retried request sends them again from the start."""
    if isinstance(files, dict):
        for value in files.values():
            if isinstance(value, tuple) and hasattr(value[1], "seek"):
                value[1].seek(0)


def _describe(exc: httpx.TransportError) -> str:
    reason = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {reason}"


def _api_error(response: httpx.Response) -> ApiError:
    """The server's ``{"error": {"code", "message", "details"}}``, or what a proxy answered."""
    try:
        body = response.json()
        error = body["error"]
        return ApiError(
            response.status_code, str(error["code"]), str(error["message"]), error.get("details")
        )
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200] or response.reason_phrase
        return ApiError(response.status_code, f"http_{response.status_code}", text)
