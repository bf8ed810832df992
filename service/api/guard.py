"""The request guard: who may call a route is decided before any byte of its body is read.

FastAPI reads and parses a request's body before it solves the route's dependencies, so a
bearer-token check written as a dependency comes too late: an anonymous client could make the
server receive a whole upload, or parse a hostile JSON body, and only then get its 401. This
pure ASGI middleware finds the route first (as the router will), reads its access level off its
dependencies (`service.api.deps.ACCESS_OF_DEPENDENCY`), and authorizes: credentials, the
token's scope over the path's ``model_id``, rate limits. Every router is covered, whoever
writes it, as long as its routes depend on `require_read`/`require_write`.

Then, for a JSON body, it reads the body (up to ``max_request_bytes``) and checks its depth and
numbers (`service.api.limits.check_json_limits`) before FastAPI parses it. A body in the Open
Inference Protocol's binary extension (header ``Inference-Header-Content-Length: N``, any
content type) is N bytes of JSON followed by raw tensor bytes: only those N bytes are checked,
and an N that is not a number within the body is refused with 400.

Route matches are cached per (method, path) in a bounded dict, so the route list is scanned
once per distinct URL rather than once per request. A route marked `service.api.direct.direct`
whose body the guard has read and checked is then called directly, without FastAPI's routing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import ACCESS_OF_DEPENDENCY, authorize
from service.api.direct import direct_arguments, dispatch
from service.api.errors import error_response
from service.api.limits import check_json_limits, too_large
from service.errors import InvalidJSON, SpectralError
from service.settings import Settings
from service.tokens import Access

AccessLevel = Access | Literal["metrics"]


def route_access(route: APIRoute) -> AccessLevel | None:
    """The strictest access level among the route's dependencies (None: public)."""
    found: set[AccessLevel] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        level = ACCESS_OF_DEPENDENCY.get(dependant.call) if dependant.call else None  # type: ignore[arg-type]
        if level is not None:
            found.add(level)
        pending.extend(dependant.dependencies)
    for level in ("write", "metrics", "read"):
        if level in found:
            return level  # type: ignore[return-value]
    return None


def api_route_contexts(app: FastAPI) -> list[tuple[RouteContext, APIRoute]]:
    """Every API route of ``app`` with its effective context (path with include prefixes)."""
    return [
        (context, context.original_route)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
    ]


_MATCH_CACHE_SIZE = 4096
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_BINARY_HEADER = b"inference-header-content-length"


def _json_prefix(scope: Scope) -> tuple[bool, int | None]:
    """Whether the body needs the JSON checks, and how many leading bytes of it are JSON
    (None: all of it; set by the V2 binary extension's header)."""
    is_json = False
    prefix: int | None = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            is_json = is_json or media == b"application/json" or media.endswith(b"+json")
        elif name == _BINARY_HEADER:
            text = value.strip()
            if not text.isdigit() or len(text) > 12:
                raise InvalidJSON(
                    "Inference-Header-Content-Length must be a non-negative byte count",
                    details={"received": value.decode("latin-1")[:40]},
                )
            prefix = int(text)
            is_json = True
    return is_json, prefix


def _takes_body(route: APIRoute, method: str) -> bool:
    # Routes that read their raw body (the predict front ends decode it with orjson) declare no
    # body field: every body-carrying method is checked, whatever the route declares.
    extra = route.openapi_extra or {}
    return route.body_field is not None or "requestBody" in extra or method in _BODY_METHODS


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._levels: dict[int, AccessLevel | None] = {}
        self._routes: list[tuple[RouteContext, APIRoute]] | None = None
        self._matches: dict[tuple[str, str], tuple[APIRoute | None, Mapping[str, Any]]] = {}

    def _match(self, scope: Scope) -> tuple[APIRoute | None, Mapping[str, Any]]:
        key = (scope["method"], scope["path"])
        found = self._matches.get(key)
        if found is None:
            found = self._scan(scope)
            if len(self._matches) >= _MATCH_CACHE_SIZE:
                # Arbitrary paths (a scan of the URL space) must not grow it without bound.
                self._matches.clear()
            self._matches[key] = found
        return found

    def _scan(self, scope: Scope) -> tuple[APIRoute | None, Mapping[str, Any]]:
        if self._routes is None:
            # Routes are fixed once the app serves; FastAPI includes routers lazily, so the
            # effective (prefixed) routes are listed through their contexts.
            self._routes = api_route_contexts(scope["app"])
        for context, route in self._routes:
            match, child = context.matches(scope)
            if match == Match.FULL:
                return route, child
        return None, {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, child = self._match(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        # Set again by the router; set here too so that HttpMetrics labels a refusal with it.
        scope["route"] = route
        level = self._levels.setdefault(id(route), route_access(route))
        settings: Settings = scope["app"].state.settings
        body_checked = False
        try:
            if level is not None:
                # The router sets the same keys again; authorize reads the path params and
                # the route (its tags say whether predict limits apply).
                request = Request({**scope, **child}, receive)
                scope.setdefault("state", {})["principal"] = authorize(request, level)
            if _takes_body(route, scope["method"]):
                is_json, prefix = _json_prefix(scope)
                if is_json:
                    receive = await self._checked_json(scope, receive, settings, prefix)
                    body_checked = True
        except SpectralError as exc:
            await error_response(exc)(scope, receive, send)
            return
        arguments = direct_arguments(route, child) if body_checked else None
        if arguments is not None:
            await dispatch(route, arguments, {**scope, **child}, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _checked_json(
        scope: Scope, receive: Receive, settings: Settings, prefix: int | None = None
    ) -> Receive:
        """Reads the whole JSON body within the request limit, checks it, and returns a
        ``receive`` that replays it."""
        limit = settings.max_request_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if prefix is not None and prefix > len(body):
            raise InvalidJSON(
                f"Inference-Header-Content-Length is {prefix}, but the body has {len(body)} bytes",
                details={"header_length": prefix, "body_length": len(body)},
            )
        check_json_limits(
            body if prefix is None else body[:prefix],
            max_depth=settings.max_json_depth,
            max_number_chars=settings.max_json_number_chars,
        )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay
