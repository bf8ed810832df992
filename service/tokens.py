"""Who a request acts for: the admin token, scoped tokens from a token file, or nobody.

A token file (``SPECTRAL_TOKENS_FILE``, JSON or TOML) lists tokens by their sha256, never in
clear::

    [[tokens]]
    name = "team-a-ci"              # shown in logs and rate-limit keys, never a secret
    sha256 = "9f86d08..."           # hex sha256 of the token
    scope = "write"                 # "read" or "write" (write includes read)
    models = ["team-a-*", "shared"] # exact names, or prefixes ending in "*"; ["*"] is every model

A plain sha256 is enough because tokens are 256-bit random strings (`new_token_entry`): there is
no dictionary to guess from, so a slow password hash would buy nothing. Every lookup hashes the
presented token and compares it with every entry in constant time (`hmac.compare_digest`), so the
time taken says nothing about which entry, or how much of one, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Access = Literal["read", "write"]
TOKEN_PREFIX = "spt_"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MODEL_PATTERN = re.compile(r"\*|[a-z0-9][a-z0-9._-]{0,127}\*?")


class TokenFileError(ValueError):
    """The token file cannot be read or holds an invalid entry (a start-up error)."""


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ScopedToken:
    """One token-file entry: its name, hash, access and the models it may touch."""

    name: str
    sha256: str
    access: Access
    models: tuple[str, ...]

    def covers(self, model_id: str) -> bool:
        """Whether ``model_id`` matches one of the entry's exact names or ``prefix*`` patterns."""
        for pattern in self.models:
            if pattern.endswith("*"):
                if model_id.startswith(pattern[:-1]):
                    return True
            elif model_id == pattern:
                return True
        return False


@dataclass(frozen=True)
class Principal:
    """Who a request acts for. ``token`` is None for the admin token and for anonymous callers."""

    kind: Literal["admin", "scoped", "anonymous"]
    token: ScopedToken | None = None
    # Rate-limit key for anonymous callers (their address); scoped tokens use their name.
    client: str = ""

    @property
    def can_write(self) -> bool:
        return self.kind == "admin" or (self.token is not None and self.token.access == "write")

    def sees(self, model_id: str) -> bool:
        """Whether this principal may know that ``model_id`` exists."""
        return self.token is None or self.token.covers(model_id)

    @property
    def rate_key(self) -> str:
        if self.token is not None:
            return f"token:{self.token.name}"
        return "admin" if self.kind == "admin" else f"anonymous:{self.client}"


ADMIN = Principal("admin")


class TokenTable:
    """The scoped tokens of a token file (empty without one)."""

    def __init__(self, entries: list[ScopedToken]) -> None:
        names = [e.name for e in entries]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise TokenFileError(f"Token names must be unique. Received duplicates: {duplicates}")
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def load(cls, path: Path | None) -> TokenTable:
        """Reads ``path`` (``.toml``, else JSON); an empty table when ``path`` is None.

        Raises:
            TokenFileError: unreadable file, bad syntax or an invalid entry (the message names
                the entry by position, never its hash).
        """
        if path is None:
            return cls([])
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise TokenFileError(f"Cannot read the token file: {exc.strerror}") from exc
        try:
            data = tomllib.loads(text) if Path(path).suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, ValueError) as exc:
            raise TokenFileError(f"The token file is not valid TOML/JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise TokenFileError('The token file needs a list "tokens" of entries')
        return cls([_entry(raw, index) for index, raw in enumerate(data["tokens"])])

    def find(self, token: str) -> ScopedToken | None:
        """The entry whose hash matches ``token``, comparing with every entry in constant time."""
        digest = token_sha256(token).encode()
        found = None
        for entry in self.entries:
            # No early exit: every entry costs the same whether or not an earlier one matched.
            if hmac.compare_digest(digest, entry.sha256.encode()):
                found = entry
        return found


def _entry(raw: Any, index: int) -> ScopedToken:
    where = f"tokens[{index}]"
    if not isinstance(raw, dict):
        raise TokenFileError(f"{where} must be a table/object")
    unknown = sorted(set(raw) - {"name", "sha256", "scope", "models"})
    if unknown:
        raise TokenFileError(f"{where} has unknown keys {unknown}")
    name, digest, access, models = (raw.get(k) for k in ("name", "sha256", "scope", "models"))
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TokenFileError(f"{where}.name must be 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        raise TokenFileError(f"{where}.sha256 must be 64 lowercase hex digits")
    if access not in ("read", "write"):
        raise TokenFileError(f"{where}.scope must be 'read' or 'write'. Received: {access!r}")
    if (
        not isinstance(models, list)
        or not models
        or not all(isinstance(m, str) and _MODEL_PATTERN.fullmatch(m) for m in models)
    ):
        raise TokenFileError(
            f"{where}.models must be a non-empty list of model names or 'prefix*' patterns"
        )
    return ScopedToken(name=name, sha256=digest, access=access, models=tuple(models))


def new_token_entry(name: str, access: Access, models: list[str]) -> tuple[str, str]:
    """A fresh random token and the TOML entry to add to the token file for it.

    The token is shown once, to whoever runs this: the file keeps only its hash.

    Returns:
        ``(token, toml_entry)``.

    Raises:
        TokenFileError: the name, access or model patterns would not load back.
    """
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    entry = _entry(
        {"name": name, "sha256": token_sha256(token), "scope": access, "models": models}, 0
    )
    toml = (
        "[[tokens]]\n"
        f'name = "{entry.name}"\n'
        f'sha256 = "{entry.sha256}"\n'
        f'scope = "{entry.access}"\n'
        f"models = {json.dumps(list(entry.models))}\n"
    )
    return token, toml
