"""Request size limits: the one place that bounds upload and predict bodies, and JSON depth
and number sizes.

A router built with ``route_class=body_limit("max_upload_bytes")`` refuses, with 413, a body
over that setting's limit: a declared Content-Length over it before anything is read, otherwise
as soon as the streamed bytes pass it, so a chunked upload is cut off instead of being spooled
whole. The limit belongs to the route itself, so a renamed route keeps it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import Request, Response, UploadFile
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from service.errors import InvalidJSON, PayloadTooLarge, UnsupportedMediaType
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


def read_model_upload(upload: UploadFile, settings: Settings) -> bytes:
    """An uploaded model's bytes, after checking its name (``.keras``) and its size against
    ``max_upload_bytes``; the JSON routes and the web UI's upload form both read models so."""
    name = upload.filename
    if name and not name.lower().endswith(".keras"):
        message = f"Expected a .keras file, got {name!r}"
        if name.lower().endswith((".h5", ".hdf5")):
            message += (
                "; legacy HDF5 (.h5) models are not accepted;"
                " re-save with model.save('model.keras')"
            )
        raise UnsupportedMediaType(message, details={"filename": name})
    return read_upload(upload, settings.max_upload_bytes)


# -- JSON limits ------------------------------------------------------------------------------
# Python's json module recurses once per nesting level and refuses integers past 4300 digits:
# a hostile body turned either into a 500. The body is checked before it is parsed, on its raw
# bytes: strings are blanked out first, so brackets and digits inside them do not count.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_INTEGER = re.compile(rb"(?<![\w.+-])-?\d{19,}(?![\w.])")
_INT64_MAX = 2**63 - 1
# bytes.translate tables: C-speed passes instead of regex scans (a 32 MiB body in ~0.1 s).
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_NUMBER_CHARS = bytes(ord("n") if chr(c) in "0123456789+-.eE" else ord(" ") for c in range(256))
_DIGITS = bytes(ord("d") if chr(c).isdigit() else ord(" ") for c in range(256))
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def check_json_limits(data: bytes, *, max_depth: int, max_number_chars: int) -> None:
    """Refuses, with `InvalidJSON` (400), JSON nested deeper than ``max_depth``, holding a
    number literal longer than ``max_number_chars`` or an integer outside 64 bits.

    Malformed JSON passes: the parser that runs next reports it with its position.
    """
    bare = _JSON_STRING.sub(b'""', data)
    brackets = np.frombuffer(bare.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    depth = int(np.cumsum(_STEP[brackets], dtype=np.int32).max(initial=0))
    if depth > max_depth:
        raise InvalidJSON(
            f"JSON nested {depth} levels deep; at most {max_depth} are accepted",
            details={"max_depth": max_depth},
        )
    if b"n" * (max_number_chars + 1) in bare.translate(_NUMBER_CHARS):
        raise InvalidJSON(
            f"JSON holds a number literal longer than {max_number_chars} characters",
            details={"max_number_chars": max_number_chars},
        )
    if b"d" * 19 not in bare.translate(_DIGITS):
        return
    for match in _INTEGER.finditer(bare):
        if not -_INT64_MAX - 1 <= int(match.group()) <= _INT64_MAX:
            raise InvalidJSON(
                "JSON holds an integer outside the signed 64-bit range; no field accepts one",
                details={"max_integer": _INT64_MAX},
            )


def load_json_limited(text: str | bytes, settings: Settings, what: str) -> Any:
    """``json.loads`` after `check_json_limits`; `InvalidJSON` names ``what`` on bad syntax."""
    data = text.encode() if isinstance(text, str) else text
    check_json_limits(
        data,
        max_depth=settings.max_json_depth,
        max_number_chars=settings.max_json_number_chars,
    )
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidJSON(f"{what} is not valid JSON: {exc}") from exc
