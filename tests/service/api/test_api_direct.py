"""Direct dispatch answers exactly as FastAPI's routing does.

A JSON body (``Content-Type: application/json``) is checked by the guard and the predict routes
are called directly; the same bytes sent as ``text/plain`` go through FastAPI's routing and
dependencies. Every case, well-formed or hostile, must get the same status, body and
protocol-specific headers both ways, on the native, V2 and TF Serving routes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.api.direct import direct_arguments
from service.api.guard import api_route_contexts
from service.settings import Settings
from tests.service.api.protocols.support import DIGITS, MULTI, Served, start_served
from tests.support.api import stop_api

ROW = [0.5] * 64
V2_ROW = {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": ROW}

CASES: list[tuple[str, object]] = [
    (f"/models/{DIGITS}/predict", {"inputs": [ROW]}),
    (f"/models/{DIGITS}/versions/2/predict", {"inputs": [ROW, ROW]}),
    (f"/models/{DIGITS}/versions/01/predict", {"inputs": [ROW]}),  # FastAPI reads 1
    (f"/models/{DIGITS}/versions/0/predict", {"inputs": [ROW]}),
    (f"/models/{DIGITS}/versions/2147483648/predict", {"inputs": [ROW]}),
    (f"/models/{DIGITS}/versions/9/predict", {"inputs": [ROW]}),
    (f"/models/{DIGITS}/versions/%EF%BC%91/predict", {"inputs": [ROW]}),  # a fullwidth 1
    ("/models/nope/predict", {"inputs": [ROW]}),
    (f"/models/{DIGITS}/predict", {"inputs": [ROW[:63]]}),
    (f"/models/{DIGITS}/predict", {"inputs": [[True] * 64]}),
    (f"/models/{DIGITS}/predict", [ROW]),
    (f"/models/{MULTI}/predict", {"inputs": {"a": [[1.0, 2.0, 3.0]]}}),
    (f"/v2/models/{DIGITS}/infer", {"inputs": [V2_ROW]}),
    (f"/v2/models/{DIGITS}/versions/2/infer", {"inputs": [V2_ROW]}),
    (f"/v2/models/{DIGITS}/versions/0/infer", {"inputs": [V2_ROW]}),
    (f"/v2/models/{DIGITS}/infer", {"inputs": [{**V2_ROW, "name": "other"}]}),
    (f"/v2/models/{DIGITS}/infer", {"inputs": [{**V2_ROW, "datatype": "BYTES"}]}),
    (f"/v2/models/{DIGITS}/infer", {"inputs": [V2_ROW], "outputs": [{"name": "nope"}]}),
    ("/v2/models/nope/infer", {"inputs": [V2_ROW]}),
    (f"/v1/models/{DIGITS}:predict", {"instances": [ROW]}),
    (f"/v1/models/{DIGITS}/versions/2:predict", {"inputs": [ROW]}),
    (f"/v1/models/{DIGITS}/versions/-1:predict", {"instances": [ROW]}),
    (f"/v1/models/{DIGITS}/labels/production:predict", {"instances": [ROW]}),
    (f"/v1/models/{DIGITS}/labels/nope:predict", {"instances": [ROW]}),
    (f"/v1/models/{DIGITS}:predict", {"instances": [ROW], "inputs": [ROW]}),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_bytes: bytes) -> Iterator[Served]:
    server = start_served(tmp_path_factory.mktemp("direct"), model_bytes)
    yield server
    stop_api(server.api)


@pytest.mark.parametrize(("path", "body"), CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_direct_and_routed_requests_get_the_same_answer(
    served: Served, path: str, body: object
) -> None:
    data = json.dumps(body).encode()
    with httpx.Client(base_url=served.api, timeout=60) as client:
        direct = client.post(path, content=data, headers={"Content-Type": "application/json"})
        routed = client.post(path, content=data, headers={"Content-Type": "text/plain"})
    assert (direct.status_code, direct.content) == (routed.status_code, routed.content)
    for header in ("content-type", "www-authenticate", "retry-after"):
        assert direct.headers.get(header) == routed.headers.get(header)


def test_every_case_is_exercised(served: Served) -> None:
    # The table holds successes and each kind of refusal, so the comparison above means
    # something: a table of only 200s (or only 404s) would pass whatever direct dispatch did.
    statuses = set()
    with httpx.Client(base_url=served.api, timeout=60) as client:
        for path, body in CASES:
            response = client.post(
                path, content=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            statuses.add(response.status_code)
    assert {200, 400, 404, 422} <= statuses


def test_only_the_post_predict_routes_are_direct(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    routes = {
        (context.path, method)
        for context, route in api_route_contexts(app)
        if direct_arguments(route, {"path_params": {}}) is not None
        for method in route.methods
    }
    assert routes == {
        ("/models/{model_id}/predict", "POST"),
        ("/models/{model_id}/versions/{version}/predict", "POST"),
        ("/v2/models/{model_id}/infer", "POST"),
        ("/v2/models/{model_id}/versions/{version}/infer", "POST"),
        ("/v1/models/{model_id:segment}:predict", "POST"),
        ("/v1/models/{model_id:segment}/versions/{version:segment}:predict", "POST"),
        ("/v1/models/{model_id:segment}/labels/{label:segment}:predict", "POST"),
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("2147483647", 2147483647), ("2147483648", None), ("0", None), ("01", None)]
    + [("+1", None), ("-1", None), ("1.0", None), ("１", None), ("", None), ("99999999999", None)],
)
def test_versions_are_converted_only_where_fastapi_would_agree(
    tmp_path: Path, text: str, expected: int | None
) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    route = next(
        route
        for context, route in api_route_contexts(app)
        if context.path == "/models/{model_id}/versions/{version}/predict"
        and "POST" in route.methods
    )
    arguments = direct_arguments(route, {"path_params": {"model_id": "m", "version": text}})
    assert (arguments or {}).get("version") == expected
