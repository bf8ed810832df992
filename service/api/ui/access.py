"""What the browser behind a UI request may do: read, write, which models, which CSRF token.

The rules are the JSON API's (`service.api.deps.authorize`) applied to the session's principal
instead of a bearer header: without any token configured everyone reads and writes; with one,
writes need a login with a write token, reads need one too under ``SPECTRAL_PROTECT_READS``,
and a scoped token sees only its models (others answer as if they did not exist). A write form
must also come from this site (Fetch Metadata, else Origin) and carry the session's CSRF
token; writes and try-it predictions count against the same rate limits as the API's.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request

from service.api.deps import RateLimiters, model_not_found
from service.api.ui.session import (
    COOKIE_NAME,
    UiSession,
    auth_configured,
    read_session,
    session_key,
)
from service.errors import Forbidden, Unauthorized
from service.settings import Settings
from service.tokens import Principal, TokenTable


@dataclass(frozen=True)
class UiAccess:
    login_required: bool
    protect_reads: bool
    principal: Principal
    session: UiSession | None

    @property
    def logged_in(self) -> bool:
        return self.session is not None

    @property
    def can_write(self) -> bool:
        return not self.login_required or self.principal.can_write

    @property
    def can_read(self) -> bool:
        return not (self.login_required and self.protect_reads) or self.logged_in

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token if self.session is not None else ""

    @property
    def who(self) -> str:
        """Whom the session acts for, as the page header says it."""
        token = self.principal.token
        if token is not None:
            return f"token {token.name} ({token.access})"
        return "admin" if self.principal.kind == "admin" else ""

    def sees(self, model_id: str) -> bool:
        return self.principal.sees(model_id)


def ui_access(request: Request) -> UiAccess:
    settings: Settings = request.app.state.settings
    tokens: TokenTable = request.app.state.tokens
    session = read_session(
        session_key(settings, tokens), settings, tokens, request.cookies.get(COOKIE_NAME)
    )
    client = request.client.host if request.client else ""
    return UiAccess(
        login_required=auth_configured(settings, tokens),
        protect_reads=settings.protect_reads,
        principal=session.principal if session else Principal("anonymous", client=client),
        session=session,
    )


def check_read(access: UiAccess, model_id: str | None = None) -> None:
    """Refuses a page the browser may not read; a model outside a token's scope is 404.

    Raises:
        Unauthorized: reads need a login and the browser has none.
        ModelNotFound: ``model_id`` is outside the session token's models.
    """
    if not access.can_read:
        raise Unauthorized("Log in with an API token to see this page")
    if model_id is not None and not access.sees(model_id):
        raise model_not_found(model_id)


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


def check_form_origin(request: Request, access: UiAccess, csrf_token: str) -> None:
    """Refuses a form from another site, or one without the session's CSRF token.

    Raises:
        Forbidden: another site posted it, or its CSRF token is missing or wrong.
    """
    check_same_site(request)
    if access.session is not None and not hmac.compare_digest(
        csrf_token.encode(), access.csrf_token.encode()
    ):
        raise Forbidden("The form's CSRF token is missing or stale: reload the page and retry")


def check_write(
    request: Request, access: UiAccess, csrf_token: str, model_id: str | None = None
) -> None:
    """Refuses a write the browser may not make, in the JSON API's order, then counts it.

    Raises:
        Forbidden: another site posted it, the CSRF token is wrong, or the token is read-only.
        Unauthorized: a token is configured and the browser has no valid session.
        ModelNotFound: ``model_id`` is outside the session token's models.
        RateLimited: the principal's write budget is spent.
    """
    if access.login_required and not access.logged_in:
        check_same_site(request)
        raise Unauthorized("Log in with an API token to make changes")
    check_form_origin(request, access, csrf_token)
    if model_id is not None and not access.sees(model_id):
        raise model_not_found(model_id)
    if not access.can_write:
        raise Forbidden("This token is read-only")
    limiters: RateLimiters = request.app.state.rate_limiters
    if limiters.writes is not None:
        limiters.writes.acquire(access.principal.rate_key)


def count_prediction(request: Request, access: UiAccess) -> None:
    """Counts a try-it prediction against the API's predict rate limit.

    Raises:
        RateLimited: the principal's predict budget is spent.
    """
    limiters: RateLimiters = request.app.state.rate_limiters
    if limiters.predicts is not None:
        limiters.predicts.acquire(access.principal.rate_key)
