"""What the browser behind a UI request may do: read, write, and with which CSRF token.

Mirrors the JSON API's rules (`service.api.deps`): without a token configured everyone may
read and write; with one, writes need a login, and reads need one too when
``SPECTRAL_PROTECT_READS`` is on. A write form must also come from this site (Fetch Metadata
and Origin) and, once logged in, carry the session's CSRF token.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request

from service.api.ui.session import COOKIE_NAME, UiSession, read_session, token_required
from service.errors import Forbidden, Unauthorized
from service.settings import Settings


@dataclass(frozen=True)
class UiAccess:
    login_required: bool
    session: UiSession | None
    protect_reads: bool

    @property
    def logged_in(self) -> bool:
        return self.session is not None

    @property
    def can_write(self) -> bool:
        return not self.login_required or self.logged_in

    @property
    def can_read(self) -> bool:
        return not (self.login_required and self.protect_reads) or self.logged_in

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token if self.session is not None else ""


def ui_access(request: Request) -> UiAccess:
    settings: Settings = request.app.state.settings
    return UiAccess(
        login_required=token_required(settings),
        session=read_session(settings, request.cookies.get(COOKIE_NAME)),
        protect_reads=settings.protect_reads,
    )


def check_read(access: UiAccess) -> None:
    if not access.can_read:
        raise Unauthorized("Log in with the API token to see this page")


def check_same_site(request: Request) -> None:
    """Refuses a form posted from another site (Fetch Metadata, else the Origin header).

    Raises:
        Forbidden: the browser says the request came from another site.
    """
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if site is not None:
        same = site in ("same-origin", "none")
    else:
        same = origin is None or urlsplit(origin).netloc == request.headers.get("host", "")
    if not same:
        raise Forbidden("Cross-site form submissions are refused")


def check_write(request: Request, access: UiAccess, csrf_token: str) -> None:
    """Refuses a write from a browser that is not logged in (when a token is configured),
    from another site, or without this session's CSRF token.

    Raises:
        Unauthorized: a token is configured and the browser has no valid session.
        Forbidden: the request came from another site or its CSRF token is wrong.
    """
    check_same_site(request)
    if not access.can_write:
        raise Unauthorized("Log in with the API token to make changes")
    if access.session is not None and not hmac.compare_digest(
        csrf_token.encode(), access.csrf_token.encode()
    ):
        raise Forbidden("The form's CSRF token is missing or stale: reload the page and retry")
