"""The request guard: who may call a route is decided before any byte of its body is read.

FastAPI reads and parses a request's body before it solves the route's dependencies, so a
bearer-token check written as a dependency comes too late: an anonymous client could make the
server receive a whole upload, or parse a hostile JSON body, and only then get its 401. This
pure ASGI middleware finds the route first (as the router will), reads its access level off its
dependencies (`service.api.deps.ACCESS_OF_DEPENDENCY`), and authorizes: credentials, the
token's scope over the path's ``model_id``, rate limits. Every router is covered, whoever
writes it, as long as its routes depend on `require_read`/`require_write`.

Then, for a JSON body, it reads the body (up to ``max_request_bytes``) and checks its depth and
numbers (`service.api.limits.check_json_limits`) before FastAPI parses it.
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
from service.api.errors import error_response
from service.api.limits import check_json_limits, too_large
from service.errors import SpectralError
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


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._levels: dict[int, AccessLevel | None] = {}
        self._routes: list[tuple[RouteContext, APIRoute]] | None = None

    def _match(self, scope: Scope) -> tuple[APIRoute | None, Mapping[str, Any]]:
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
        try:
            if level is not None:
                # The router sets the same keys again; authorize reads the path params and
                # the route (its tags say whether predict limits apply).
                request = Request({**scope, **child}, receive)
                scope.setdefault("state", {})["principal"] = authorize(request, level)
            if _is_json(scope) and route.body_field is not None:
                receive = await self._checked_json(scope, receive, settings)
        except SpectralError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _checked_json(scope: Scope, receive: Receive, settings: Settings) -> Receive:
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
        check_json_limits(
            body,
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
