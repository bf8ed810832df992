"""Scoped tokens (token file, hashing, scopes) and the per-caller token buckets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.errors import RateLimited
from service.ratelimit import RateLimiter
from service.tokens import (
    ADMIN,
    Principal,
    ScopedToken,
    TokenFileError,
    TokenTable,
    new_token_entry,
    token_sha256,
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_new_token_entry_loads_back_and_finds_only_its_token(tmp_path: Path) -> None:
    token, entry = new_token_entry("team-a-ci", "write", ["team-a-*", "shared"])
    other, other_entry = new_token_entry("reader", "read", ["*"])
    assert token.startswith("spt_") and len(token) > 40
    assert token not in entry, "the file must hold the hash, never the token"
    table = TokenTable.load(_write(tmp_path, "tokens.toml", entry + "\n" + other_entry))
    found = table.find(token)
    assert found == ScopedToken("team-a-ci", token_sha256(token), "write", ("team-a-*", "shared"))
    assert table.find(other) is not None and table.find(other).name == "reader"  # type: ignore[union-attr]
    for wrong in ("", token[:-1], token + "x", token_sha256(token), token.upper()):
        assert table.find(wrong) is None, wrong


def test_json_token_file(tmp_path: Path) -> None:
    digest = token_sha256("t0ken")
    data = {"tokens": [{"name": "ro", "sha256": digest, "scope": "read", "models": ["m1"]}]}
    table = TokenTable.load(_write(tmp_path, "tokens.json", json.dumps(data)))
    assert len(table) == 1
    assert table.find("t0ken") == ScopedToken("ro", digest, "read", ("m1",))
    assert len(TokenTable.load(None)) == 0


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"sha256": "a" * 64, "scope": "read", "models": ["m"]}, "name"),
        ({"name": "x", "sha256": "abc", "scope": "read", "models": ["m"]}, "sha256"),
        ({"name": "x", "sha256": "A" * 64, "scope": "read", "models": ["m"]}, "sha256"),
        ({"name": "x", "sha256": "a" * 64, "scope": "admin", "models": ["m"]}, "scope"),
        ({"name": "x", "sha256": "a" * 64, "scope": "read", "models": []}, "models"),
        ({"name": "x", "sha256": "a" * 64, "scope": "read", "models": ["a*b"]}, "models"),
        ({"name": "x", "sha256": "a" * 64, "scope": "read", "models": "m"}, "models"),
        (
            {"name": "x", "sha256": "a" * 64, "scope": "read", "models": ["m"], "token": "t"},
            "unknown",
        ),
    ],
)
def test_invalid_entries_stop_loading(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    path = _write(tmp_path, "tokens.json", json.dumps({"tokens": [entry]}))
    with pytest.raises(TokenFileError, match=message) as info:
        TokenTable.load(path)
    assert "tokens[0]" in str(info.value)
    assert "a" * 64 not in str(info.value), "errors never echo a hash"


@pytest.mark.parametrize(
    "text", ["", "tokens = 3", "[[tokens]]\nname = ", '{"tokens": {}}', "not json at all"]
)
def test_malformed_files_stop_loading(tmp_path: Path, text: str) -> None:
    suffix = ".toml" if "=" in text else ".json"
    with pytest.raises(TokenFileError):
        TokenTable.load(_write(tmp_path, f"tokens{suffix}", text))
    with pytest.raises(TokenFileError, match="Cannot read"):
        TokenTable.load(tmp_path / "missing.toml")


def test_duplicate_names_are_refused() -> None:
    entry = ScopedToken("dup", "a" * 64, "read", ("m",))
    with pytest.raises(TokenFileError, match="dup"):
        TokenTable([entry, entry])


def test_scopes_by_exact_name_and_prefix() -> None:
    token = ScopedToken("t", "a" * 64, "read", ("team-a-*", "shared"))
    scoped = Principal("scoped", token=token)
    assert scoped.sees("team-a-x") and scoped.sees("team-a-") and scoped.sees("shared")
    assert not scoped.sees("team-b-x") and not scoped.sees("shared2")
    assert not scoped.sees("team-a") and not scoped.sees("xteam-a-x")
    assert not scoped.can_write
    everything = Principal("scoped", token=ScopedToken("w", "b" * 64, "write", ("*",)))
    assert everything.sees("anything") and everything.can_write
    assert ADMIN.sees("anything") and ADMIN.can_write
    assert Principal("anonymous", client="1.2.3.4").rate_key == "anonymous:1.2.3.4"
    assert scoped.rate_key == "token:t" and ADMIN.rate_key == "admin"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_the_burst_then_answers_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter("write", 6, 60.0, clock=clock)  # one every 10 s, burst 6
    for _ in range(6):
        limiter.acquire("a")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("a")
    assert info.value.retry_after_s == 10
    assert info.value.status_code == 429 and info.value.details == {"retry_after_s": 10}
    limiter.acquire("b")  # another caller has its own bucket
    clock.now += 4.0
    with pytest.raises(RateLimited) as info:
        limiter.acquire("a")
    assert info.value.retry_after_s == 6
    clock.now += 6.0
    limiter.acquire("a")
    with pytest.raises(RateLimited):
        limiter.acquire("a")
    clock.now += 3600.0  # refills to the burst, no further
    for _ in range(6):
        limiter.acquire("a")
    with pytest.raises(RateLimited):
        limiter.acquire("a")


def test_fractional_rates_round_retry_after_up() -> None:
    clock = FakeClock()
    limiter = RateLimiter("predict", 2.5, 1.0, clock=clock)
    limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("a")
    assert info.value.retry_after_s == 1
    with pytest.raises(ValueError, match="positive"):
        RateLimiter("x", 0, 1.0)
