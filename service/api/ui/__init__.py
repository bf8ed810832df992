"""The web UI served by the API at ``/ui`` (server-rendered templates, packaged assets).

Pages (`pages`) and forms (`forms`) call the same domain functions as the JSON routes;
`access` and `session` decide what the browser may do; `views` and `plots` compute what the
pages show from registry records and stored reports. Everything ships in the package:
templates in ``templates/``, one stylesheet and one small script in ``static/``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from service.api.ui import forms, pages


def install_ui(app: FastAPI) -> None:
    """Mounts the UI's pages and assets on ``app`` (being built), and sends ``/`` to it."""
    for router in (pages.router, forms.router, forms.model_uploads, forms.dataset_uploads):
        app.include_router(router)
    app.mount(
        "/ui/static",
        StaticFiles(directory=Path(__file__).parent / "static"),
        name="ui-static",
    )

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui", status_code=307)
