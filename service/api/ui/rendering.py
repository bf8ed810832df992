"""The UI's Jinja2 environment, page rendering and the route class that shows errors as pages."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from service.api.ui.access import ui_access
from service.api.ui.views import file_size, metric_text
from service.errors import SpectralError

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["filesize"] = file_size
templates.env.filters["metric"] = metric_text


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> Response:
    """The page ``template`` with ``context``, plus what every page needs (access, CSRF)."""
    return templates.TemplateResponse(
        request,
        template,
        {"access": ui_access(request), **(context or {})},
        status_code=status_code,
    )


def html_errors(base: type[APIRoute] = APIRoute) -> type[APIRoute]:
    """``base`` with service errors rendered as an HTML page instead of the API's JSON."""

    class HtmlErrorRoute(base):  # type: ignore[valid-type,misc]
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def rendered(request: Request) -> Response:
                try:
                    return await handler(request)
                except SpectralError as exc:
                    return render(
                        request, "error.html", {"error": exc}, status_code=exc.status_code
                    )

            return rendered

    return HtmlErrorRoute
