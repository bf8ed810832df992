"""Who is using the UI: a signed session cookie that stands for a checked token, and its CSRF
token.

The browser never holds the API token itself after login: the cookie carries only an expiry
and a random nonce, signed with a key derived from ``SPECTRAL_API_TOKEN`` (so rotating the
token ends every session), and is HttpOnly and SameSite=Strict. The CSRF token a write form
carries is another HMAC of the same nonce, so it needs no server-side storage either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from service.settings import Settings

COOKIE_NAME = "spectral_ui_session"
SESSION_TTL_S = 12 * 3600
_KEY_LABEL = b"spectral-ui-session-v1"


def _session_key(settings: Settings) -> bytes | None:
    if settings.api_token is None:
        return None
    secret = settings.api_token.get_secret_value().encode()
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def token_required(settings: Settings) -> bool:
    """Whether writes (and, with protect_reads, reads) need a login."""
    return settings.api_token is not None or settings.tokens_file is not None


def token_is_valid(settings: Settings, token: str) -> bool:
    """Whether ``token`` is the admin token, compared in constant time.

    Scoped tokens from a token file cannot open a UI session yet: the session key is derived
    from the admin token, which a token-file-only deployment does not have.
    """
    if settings.api_token is None:
        return False
    expected = settings.api_token.get_secret_value().encode()
    return hmac.compare_digest(token.encode(), expected)


@dataclass(frozen=True)
class UiSession:
    """A logged-in browser: when the session ends and the token its forms must carry."""

    expires_at: int
    csrf_token: str


def _sign(key: bytes, payload: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def _csrf(key: bytes, nonce: str) -> str:
    return hmac.new(key, b"csrf:" + nonce.encode(), hashlib.sha256).hexdigest()


def new_session_cookie(settings: Settings, now: float | None = None) -> str:
    """The cookie value of a fresh session (the caller has checked the token)."""
    key = _session_key(settings)
    if key is None:
        raise RuntimeError("UI sessions need SPECTRAL_API_TOKEN")
    issued = int(time.time() if now is None else now)
    payload = json.dumps(
        {"exp": issued + SESSION_TTL_S, "nonce": secrets.token_urlsafe(16)},
        separators=(",", ":"),
    ).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _sign(key, payload)


def read_session(
    settings: Settings, cookie: str | None, now: float | None = None
) -> UiSession | None:
    """The session ``cookie`` stands for, or None when it is missing, forged or expired."""
    key = _session_key(settings)
    if key is None or not cookie or cookie.count(".") != 1:
        return None
    encoded, signature = cookie.split(".")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        return None
    if not hmac.compare_digest(signature, _sign(key, payload)):
        return None
    try:
        data = json.loads(payload)
        expires_at, nonce = int(data["exp"]), str(data["nonce"])
    except (ValueError, KeyError, TypeError):
        return None
    if expires_at <= (time.time() if now is None else now):
        return None
    return UiSession(expires_at=expires_at, csrf_token=_csrf(key, nonce))
