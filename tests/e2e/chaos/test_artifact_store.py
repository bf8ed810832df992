"""The S3 artifact store cut off while a job runs: the worker treats it as transient, waits
with backoff and runs the job again in the same attempt, which then succeeds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import pytest

from tests.e2e.chaos.conftest import ChaosStack
from tests.support.chaos import TcpProxy
from tests.support.s3 import AWS_TEST_ENV, S3Server, s3_server  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def s3_proxy(s3_server: S3Server) -> Iterator[TcpProxy]:  # noqa: F811
    endpoint = urlparse(s3_server.endpoint)
    proxy = TcpProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80)
    proxy.start()
    yield proxy
    proxy.stop()


def test_artifact_store_outage_is_waited_out(
    chaos_stack: Callable[..., ChaosStack],
    s3_server: S3Server,  # noqa: F811
    s3_proxy: TcpProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The invariant checker, in this process, reads the bucket directly.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    stack = chaos_stack(
        **AWS_TEST_ENV,
        AWS_ENDPOINT_URL=s3_proxy.url,
        SPECTRAL_ARTIFACT_URL=f"s3://{s3_server.new_bucket()}/chaos",
    )
    worker = stack.start_worker()
    job_id = stack.submit(stack.long_body(epochs=15))
    stack.wait_running(job_id)
    s3_proxy.stop()  # the job trains on; storing its result finds the store gone
    deadline = time.monotonic() + 90
    while "transient fault (ArtifactStoreUnavailable" not in worker.log_text():
        assert time.monotonic() < deadline, f"the outage was never hit\n{stack.dump()}"
        assert stack.jobs()[job_id].status == "running", stack.dump()
        time.sleep(0.2)
    s3_proxy.start()
    rows = stack.wait_terminal(timeout=120)
    assert rows[job_id].status == "succeeded", stack.dump()
    assert rows[job_id].attempts == 1, "a transient fault is not an attempt"
    stack.check()
