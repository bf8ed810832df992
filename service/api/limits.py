"""Request size limits: the one place that bounds upload and predict bodies.

A router built with ``route_class=body_limit("max_upload_bytes")`` refuses, with 413, a body
over that setting's limit: a declared Content-Length over it before anything is read, otherwise
as soon as the streamed bytes pass it, so a chunked upload is cut off instead of being spooled
whole. The limit belongs to the route itself, so a renamed route keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response, UploadFile
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from service.errors import PayloadTooLarge
from service.settings import Settings

# Room for the multipart boundaries and the form's other fields around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
_CHUNK = 1 << 20


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Request body exceeds the limit of {limit / (1024 * 1024):.3g} MiB",
        details={"limit_bytes": limit},
    )


def body_limit(setting: str, *, overhead: int = 0) -> type[APIRoute]:
    """A route class whose requests may carry at most ``Settings.<setting>`` (+ ``overhead``)
    bytes of body; the settings are the app's own (``app.state.settings``)."""

    class BodyLimitedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def limited(request: Request) -> Response:
                settings: Settings = request.app.state.settings
                limit: int = getattr(settings, setting)
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit + overhead:
                    raise too_large(limit)
                receive = request.receive
                received = 0

                async def counting_receive() -> Message:
                    nonlocal received
                    message = await receive()
                    if message["type"] == "http.request":
                        received += len(message.get("body", b""))
                        if received > limit + overhead:
                            # FastAPI re-raises HTTPExceptions from body parsing as they are
                            # (anything else becomes a generic 400); the handler makes it 413.
                            raise StarletteHTTPException(413, detail=too_large(limit).message)
                    return message

                return await handler(Request(request.scope, counting_receive))

            return limited

    return BodyLimitedRoute


def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The uploaded file's bytes; `PayloadTooLarge` past ``limit`` (the body limit above lets
    the multipart framing through, this bounds the file itself)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := upload.file.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
