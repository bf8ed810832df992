"""The request guard and the Open Inference Protocol's binary extension: with
``Inference-Header-Content-Length: N`` only the first N bytes are JSON and only they are checked;
a bogus N is 400; the binary tail is never taken for hostile JSON."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support.api import RunningApi
from tests.support.uploads import upload

DEEP = b"[" * 500 + b"]" * 500


def test_binary_bodies_are_checked_only_in_their_json_header(
    start_api: Callable[..., RunningApi], model_bytes: bytes
) -> None:
    api = start_api()
    client = httpx.Client(base_url=api, timeout=60)
    assert upload(client, "guarded", model_bytes).status_code == 201
    url = "/models/guarded/predict"
    header = b'{"inputs": []}'

    def post(
        body: bytes, length: str | None, media: str = "application/octet-stream"
    ) -> httpx.Response:
        headers = {"Content-Type": media}
        if length is not None:
            headers["Inference-Header-Content-Length"] = length
        return client.post(url, content=body, headers=headers)

    # A tail of raw tensor bytes that would look like 500-deep JSON passes the guard (the
    # native route then refuses the body on its own terms, not as hostile JSON).
    passed = post(header + DEEP, str(len(header)))
    assert passed.status_code != 400 or passed.json()["error"]["code"] != "invalid_json"
    # The same bytes as a whole JSON body, or a header that is itself hostile: refused.
    assert post(header + DEEP, None, "application/json").status_code == 400
    hostile = post(DEEP + b"\x00\x01", str(len(DEEP)))
    assert (hostile.status_code, hostile.json()["error"]["code"]) == (400, "invalid_json")
    for bogus in ("-1", "abc", "1e3", str(len(header) + 10_000), "9" * 40):
        response = post(header, bogus)
        assert response.status_code == 400, (bogus, response.text)
        assert "Inference-Header-Content-Length" in response.json()["error"]["message"]
    # Plain JSON bodies are still checked as before.
    assert post(DEEP, None, "application/json").json()["error"]["code"] == "invalid_json"
