"""The JSON pre-check that runs before any body or query is parsed (no server needed)."""

from __future__ import annotations

import json
import time

import pytest

from service.api.limits import check_json_limits, load_json_limited
from service.errors import InvalidJSON
from service.settings import Settings


def _check(data: bytes, depth: int = 8, chars: int = 30) -> None:
    check_json_limits(data, max_depth=depth, max_number_chars=chars)


def test_depth_is_counted_outside_strings_only() -> None:
    _check(b"[" * 8 + b"]" * 8)
    with pytest.raises(InvalidJSON, match="nested 9 levels deep; at most 8"):
        _check(b"[" * 9 + b"]" * 9)
    with pytest.raises(InvalidJSON, match="nested 9"):
        _check(b'{"a":' * 9 + b"1" + b"}" * 9)
    # Brackets inside strings, escaped quotes included, are text.
    _check(json.dumps({"s": "[" * 100, "t": '\\"[[[[[[[[[[[[', "u": ["]]]]"]}).encode())
    # Wide is fine: only depth counts.
    _check(json.dumps([[0.5] * 10] * 10_000).encode())


def test_number_length_and_64_bit_integers() -> None:
    _check(b"[" + b"1" * 19 + b"]")
    _check(b"[9223372036854775807, -9223372036854775808, 1.5e300, 0.000000000000000000001]")
    for too_big in (b"9223372036854775808", b"-9223372036854775809", b"1" * 25):
        with pytest.raises(InvalidJSON, match="64-bit"):
            _check(b'{"version": ' + too_big + b"}")
    with pytest.raises(InvalidJSON, match="longer than 30 characters"):
        _check(b"[" + b"7" * 31 + b"]")
    with pytest.raises(InvalidJSON, match="longer than 30"):
        _check(b"[0." + b"1" * 40 + b"]")
    # Digits in strings are text, however many.
    _check(json.dumps({"id": "9" * 5000}).encode())


def test_load_json_limited_refuses_what_python_cannot_parse() -> None:
    settings = Settings()
    assert load_json_limited("[[1, 2.5]]", settings, "inputs") == [[1, 2.5]]
    for hostile in ("[" * 100_000, "1" * 5000, "[" + "1" * 5000 + "]", "{"):
        with pytest.raises(InvalidJSON):
            load_json_limited(hostile, settings, "Query parameter 'inputs'")
    with pytest.raises(InvalidJSON, match="Query parameter 'inputs' is not valid JSON"):
        load_json_limited("[1,", settings, "Query parameter 'inputs'")


def test_a_body_at_the_request_limit_is_checked_quickly() -> None:
    body = b"[" + b"[0.123456789, -1, 2e-7]," * 400_000 + b"[]]"  # ~10 MiB
    start = time.perf_counter()
    _check(body)
    assert time.perf_counter() - start < 2.0
