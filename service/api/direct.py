"""Direct dispatch of the predict routes: past the request guard, straight to the endpoint.

A batch-1 predict does tens of microseconds of arithmetic; FastAPI's route matching, dependency
solving and exception middlewares around it cost many times that. For the routes marked
`direct`, the guard
calls the endpoint itself once it has done everything those layers would: matched the route,
authorized the caller (token, scope, rate limit), read the body within ``max_request_bytes``
and checked its JSON. Errors still go through `service.api.errors.error_response`, so the
answer is the same byte for byte.

A route qualifies only if FastAPI would do nothing else for it: an ``async`` endpoint taking
``request`` and string path parameters, plus ``version``, which is converted here exactly as
`service.api.params.VersionPath` bounds it. Whatever the guard has not fully checked (a body
that is not JSON, a version FastAPI would refuse or coerce) takes the ordinary route, which
answers it as before.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.api.errors import error_response
from service.errors import SpectralError
from service.versions import MAX_VERSION

Endpoint = Callable[..., Awaitable[Response]]

_DIRECT: set[Callable[..., Any]] = set()
_VERSION = re.compile(r"[1-9][0-9]{0,9}")


def direct(endpoint: Endpoint) -> Endpoint:
    """Marks a route's endpoint for direct dispatch (see the module docstring for the rules)."""
    _DIRECT.add(endpoint)
    return endpoint


def direct_arguments(route: APIRoute, child: Mapping[str, Any]) -> dict[str, Any] | None:
    """The endpoint's keyword arguments from the matched path, or None when FastAPI must
    handle the request."""
    if route.endpoint not in _DIRECT:
        return None
    arguments = dict(child.get("path_params") or {})
    if "version" in arguments:
        text = arguments["version"]
        # Only canonical numbers in range; anything else ("01", "+1", "0", 2**31) is left to
        # FastAPI, whose answer (a coerced value or a 422) it keeps.
        if not (isinstance(text, str) and _VERSION.fullmatch(text)):
            return None
        version = int(text)
        if version > MAX_VERSION:
            return None
        arguments["version"] = version
    return arguments


async def dispatch(
    route: APIRoute, arguments: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    """Calls the endpoint and sends its response, or the error's."""
    request = Request(scope, receive)
    try:
        response: Response = await route.endpoint(request=request, **arguments)
    except SpectralError as exc:
        response = error_response(exc)
    await response(scope, receive, send)
