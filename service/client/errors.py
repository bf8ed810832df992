"""What the client raises: the server's error answers, an unreachable server, a wait that ended.

Each error says which exit code the ``spectral`` command gives it (`exit_code`), so the CLI
maps errors to exit codes in one place and a script using the client can do the same.
"""

from __future__ import annotations

from typing import Any

# Exit codes of the `spectral` client commands, as pipelines branch on them.
EXIT_OK = 0
EXIT_GATE_REFUSED = 1
EXIT_USAGE = 2
EXIT_JOB_FAILED = 3
EXIT_UNAVAILABLE = 4


class ClientError(Exception):
    """Base class of the client's errors."""

    exit_code: int = EXIT_USAGE


class ApiError(ClientError):
    """The server answered with an error (after retries, for transient ones).

    Attributes:
        status_code: The HTTP status.
        code: The server's stable error code (``model_not_found``, ``alias_conflict``, ...).
        message: The server's message.
        details: The server's details (e.g. ``{"current_version": 3}`` for ``alias_conflict``).
    """

    def __init__(
        self, status_code: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return EXIT_UNAVAILABLE if self.status_code >= 500 else EXIT_USAGE

    def to_dict(self) -> dict[str, Any]:
        """The server's error shape, ``{"error": {"code", "message", "details"}}``."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
                "status": self.status_code,
            }
        }


class ServerUnavailable(ClientError):
    """The server could not be reached (connection refused, DNS, timeout) after the retries."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, url: str, reason: str, attempts: int) -> None:
        super().__init__(f"cannot reach {url} after {attempts} attempt(s): {reason}")
        self.url = url
        self.reason = reason
        self.attempts = attempts

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "code": "server_unavailable",
                "message": str(self),
                "details": {"url": self.url, "attempts": self.attempts},
            }
        }


class WaitTimeout(ClientError):
    """`Client.wait` gave up before the job finished; the job goes on."""

    exit_code = EXIT_JOB_FAILED

    def __init__(self, job_id: str, timeout: float, last_status: str) -> None:
        super().__init__(
            f"job {job_id} did not finish within {timeout:g} s (still {last_status}); "
            f"follow it with `spectral jobs wait {job_id}`"
        )
        self.job_id = job_id
        self.timeout = timeout
        self.last_status = last_status

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "code": "wait_timeout",
                "message": str(self),
                "details": {"job_id": self.job_id, "status": self.last_status},
            }
        }
