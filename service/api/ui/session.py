"""Who is using the UI: a signed session cookie that stands for a checked token, and its CSRF
token.

After login the browser holds no token, only a cookie (HttpOnly, SameSite=Strict) carrying an
expiry, a random nonce and whom it acts for (``admin`` or a scoped token's name), signed with
HMAC-SHA256. The CSRF token a write form carries is another HMAC of the same nonce, so nothing
is stored on the server and every API process checks a session alike.

The signing key is derived from the server's secrets: the admin token and every token-file
entry (name, hash, scope, models), so changing any of them ends every session. Without an
admin token the key is only as secret as the token hashes: forging a session then takes the
hash of every token in the file, and a file of one token lets its holder forge sessions only
for that same token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from service.api.deps import auth_configured
from service.settings import Settings
from service.tokens import ADMIN, Principal, TokenTable

COOKIE_NAME = "spectral_ui_session"
SESSION_TTL_S = 12 * 3600
_KEY_LABEL = b"spectral-ui-session-v1"


def session_key(settings: Settings, tokens: TokenTable) -> bytes | None:
    """The key sessions are signed with; None when no token is configured (no sessions)."""
    if not auth_configured(settings, tokens):
        return None
    digest = hashlib.sha256(_KEY_LABEL)
    if settings.api_token is not None:
        digest.update(b"admin\0" + settings.api_token.get_secret_value().encode() + b"\0")
    for entry in sorted(tokens.entries, key=lambda e: e.name):
        described = [entry.name, entry.sha256, entry.access, *entry.models]
        digest.update(json.dumps(described).encode() + b"\0")
    return digest.digest()


@dataclass(frozen=True)
class UiSession:
    """A logged-in browser: whom it acts for, when the session ends, what its forms carry."""

    principal: Principal
    expires_at: int
    csrf_token: str


def _sign(key: bytes, payload: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def _csrf(key: bytes, nonce: str) -> str:
    return hmac.new(key, b"csrf:" + nonce.encode(), hashlib.sha256).hexdigest()


def _subject(principal: Principal) -> str:
    return f"token:{principal.token.name}" if principal.token is not None else "admin"


def new_session_cookie(key: bytes, principal: Principal, now: float | None = None) -> str:
    """The cookie value of a fresh session for ``principal`` (whose token the caller checked)."""
    issued = int(time.time() if now is None else now)
    payload = json.dumps(
        {
            "exp": issued + SESSION_TTL_S,
            "nonce": secrets.token_urlsafe(16),
            "sub": _subject(principal),
        },
        separators=(",", ":"),
    ).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _sign(key, payload)


def read_session(
    key: bytes | None,
    settings: Settings,
    tokens: TokenTable,
    cookie: str | None,
    now: float | None = None,
) -> UiSession | None:
    """The session ``cookie`` stands for; None when it is missing, forged, expired, or names a
    token the server no longer has."""
    if key is None or not cookie or cookie.count(".") != 1:
        return None
    encoded, signature = cookie.split(".")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        return None
    if not hmac.compare_digest(signature.encode(), _sign(key, payload).encode()):
        return None
    try:
        data = json.loads(payload)
        expires_at, nonce, subject = int(data["exp"]), str(data["nonce"]), str(data["sub"])
    except (ValueError, KeyError, TypeError):
        return None
    if expires_at <= (time.time() if now is None else now):
        return None
    principal: Principal | None = None
    if subject == "admin" and settings.api_token is not None:
        principal = ADMIN
    elif subject.startswith("token:"):
        name = subject.removeprefix("token:")
        entry = next((e for e in tokens.entries if e.name == name), None)
        principal = Principal("scoped", token=entry) if entry is not None else None
    if principal is None:
        return None
    return UiSession(principal=principal, expires_at=expires_at, csrf_token=_csrf(key, nonce))
