"""Adaptive batching: concurrent requests for one version share one forward pass.

A request joins the version's queue and a flush is scheduled for the next turn of the event
loop, so requests that reach the core in the same turn share a forward and a lone request
waits for nothing. When several are queued but fewer than ``max_rows`` rows, the flush waits
for more until the oldest has waited ``max_delay_s``. Rows are counted, not requests: a batch
never passes ``max_rows`` unless one request alone is larger, and then it runs alone.

Small forwards run on the event loop (a thread hop costs more than a few small matmuls); a
forward over ``inline_macs`` multiply-adds, and every Keras forward, runs on the version's own
worker thread so the loop keeps serving. A batch whose forward fails is retried request by
request, so one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

Forward = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass
class _Pending:
    arrays: list[np.ndarray]
    rows: int
    future: asyncio.Future[list[np.ndarray]]
    since: float = field(default_factory=time.perf_counter)


class Batcher:
    """Coalesces the requests of one version into forwards.

    Args:
        forward: Input arrays (batch first) to output arrays, for any batch size.
        max_rows: Most rows one forward coalesces.
        max_delay_s: Longest a queued request waits for others.
        macs_per_row: The forward's cost per row; with ``inline_macs`` decides where it runs.
        on_forward: Called with the rows of each forward (metrics).
    """

    def __init__(
        self,
        forward: Forward,
        *,
        max_rows: int,
        max_delay_s: float,
        macs_per_row: int | None,
        inline_macs: int = 2_000_000,
        on_forward: Callable[[int], None] | None = None,
    ) -> None:
        self.forward = forward
        self.max_rows = max(1, max_rows)
        self.max_delay_s = max(0.0, max_delay_s)
        self.macs_per_row = macs_per_row
        self.inline_macs = inline_macs
        self.on_forward = on_forward
        self.forwards = 0
        self._queue: deque[_Pending] = deque()
        self._running = False
        self._scheduled = False
        self._executor: ThreadPoolExecutor | None = None

    async def submit(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        self._queue.append(_Pending(arrays, int(arrays[0].shape[0]), future))
        self._schedule(loop, 0.0)
        return await future

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def _schedule(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        if self._running or self._scheduled or not self._queue:
            return
        self._scheduled = True
        if delay > 0:
            loop.call_later(delay, self._flush, loop)
        else:
            loop.call_soon(self._flush, loop)

    def _take(self) -> list[_Pending]:
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_rows:
            rows += self._queue[0].rows
            batch.append(self._queue.popleft())
        return batch

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        # Requests cancelled while queued (client gone) take no rows.
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()
        if self._running or not self._queue:
            return
        queued_rows = sum(p.rows for p in self._queue)
        if len(self._queue) > 1 and queued_rows < self.max_rows and self.max_delay_s > 0:
            waited = time.perf_counter() - self._queue[0].since
            if waited < self.max_delay_s:
                self._schedule(loop, self.max_delay_s - waited)
                return
        batch = self._take()
        rows = sum(p.rows for p in batch)
        inline = self.macs_per_row is not None and rows * self.macs_per_row <= self.inline_macs
        if inline:
            self._finish(batch, self._run(batch))
            self._schedule(loop, 0.0)
            return
        self._running = True
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="predict-forward")
        done = loop.run_in_executor(self._executor, self._run, batch)

        def finished(task: asyncio.Future[list[list[np.ndarray] | BaseException]]) -> None:
            self._running = False
            self._finish(batch, task.result())
            self._schedule(loop, 0.0)

        done.add_done_callback(finished)

    def _run(self, batch: list[_Pending]) -> list[list[np.ndarray] | BaseException]:
        """Each request's outputs (or its error); runs the merged forward, then, if it fails,
        each request alone."""
        self.forwards += 1
        if self.on_forward is not None:
            self.on_forward(sum(p.rows for p in batch))
        if len(batch) == 1:
            try:
                return [self.forward(batch[0].arrays)]
            except Exception as exc:
                return [exc]
        merged = [np.concatenate([p.arrays[i] for p in batch]) for i in range(len(batch[0].arrays))]
        try:
            outputs = self.forward(merged)
        except Exception:
            results: list[list[np.ndarray] | BaseException] = []
            for p in batch:
                try:
                    results.append(self.forward(p.arrays))
                except Exception as exc:
                    results.append(exc)
            return results
        split: list[list[np.ndarray] | BaseException] = []
        start = 0
        for p in batch:
            split.append([o[start : start + p.rows] for o in outputs])
            start += p.rows
        return split

    @staticmethod
    def _finish(batch: list[_Pending], results: list[list[np.ndarray] | BaseException]) -> None:
        for p, result in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)
