"""The batcher with real numpy forwards, real threads and a real event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from service.serving.batching import Batcher

KERNEL = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")


class Recorder:
    """A numpy forward that records the batch sizes it ran and the threads it ran on."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(arrays[0].shape[0])
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and (arrays[0] == self.fail_on).any():
            raise RuntimeError("poisoned row")
        return [arrays[0] @ KERNEL]


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)).astype("float32")


async def _burst(batcher: Batcher, sizes: list[int]) -> list[np.ndarray | BaseException]:
    inputs = [_rows(n, i) for i, n in enumerate(sizes)]
    results = await asyncio.gather(*(batcher.submit([x]) for x in inputs), return_exceptions=True)
    out: list[np.ndarray | BaseException] = []
    for x, result in zip(inputs, results, strict=True):
        if isinstance(result, BaseException):
            out.append(result)
        else:
            # Equal up to BLAS summation order, which differs between batch sizes.
            np.testing.assert_allclose(result[0], x @ KERNEL, rtol=1e-6, atol=1e-6)
            out.append(result[0])
    return out


@pytest.mark.parametrize("inline", [True, False])
def test_concurrent_requests_share_forwards_and_split_exactly(inline: bool) -> None:
    forward = Recorder()
    batcher = Batcher(forward, max_rows=16, max_delay_s=0.005, macs_per_row=24 if inline else None)
    asyncio.run(_burst(batcher, [1, 3, 2, 5, 1, 4, 1, 1, 2, 7, 1, 1]))
    assert sum(forward.batches) == 29
    assert len(forward.batches) < 12
    assert max(forward.batches) <= 16
    assert batcher.forwards == len(forward.batches)
    # Small forwards run on the loop; the Keras path (no cost known) on the worker thread.
    assert (forward.threads == {"MainThread"}) == inline
    batcher.close()


def test_a_request_over_the_row_limit_runs_alone() -> None:
    forward = Recorder()
    batcher = Batcher(forward, max_rows=64, max_delay_s=0.01, macs_per_row=None)
    asyncio.run(_burst(batcher, [3, 200, 5]))
    assert 200 in forward.batches
    assert all(b <= 64 for b in forward.batches if b != 200)
    batcher.close()


def test_a_lone_request_does_not_wait_for_the_delay() -> None:
    forward = Recorder()
    batcher = Batcher(forward, max_rows=64, max_delay_s=0.5, macs_per_row=24)

    async def timed() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.submit([_rows(1, 0)])
        return loop.time() - start

    assert asyncio.run(timed()) < 0.05


def test_a_failing_request_fails_alone() -> None:
    forward = Recorder(fail_on=99.0)
    batcher = Batcher(forward, max_rows=64, max_delay_s=0.005, macs_per_row=None)

    async def run() -> list[Any]:
        good = [batcher.submit([_rows(2, i)]) for i in range(5)]
        bad = batcher.submit([np.full((1, 8), 99.0, "float32")])
        return await asyncio.gather(*good, bad, return_exceptions=True)

    results = asyncio.run(run())
    assert isinstance(results[-1], RuntimeError)
    assert all(not isinstance(r, BaseException) for r in results[:-1])
    batcher.close()
