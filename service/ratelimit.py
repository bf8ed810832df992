"""Per-caller rate limits: one token bucket per (caller, kind), in this process's memory.

The buckets live in the API process, so with ``SPECTRAL_API_WORKERS=N`` a caller gets up to N
times the rate (each worker counts alone), and a restart refills every bucket. That is enough
to stop one client from starving the others on one server; a shared limit across replicas
needs a shared store (e.g. Redis) in front.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from service.errors import RateLimited

# Oldest buckets beyond this are dropped (a dropped caller starts again with a full bucket), so
# callers cycling through addresses cannot grow memory without bound.
MAX_BUCKETS = 100_000


class RateLimiter:
    """Token buckets: ``rate`` tokens per ``period_s`` seconds, holding at most ``burst``."""

    def __init__(
        self,
        kind: str,
        rate: float,
        period_s: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or period_s <= 0:
            raise ValueError(f"rate and period_s must be positive. Received: {rate}, {period_s}")
        self.kind = kind
        self.per_second = rate / period_s
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, key: str) -> None:
        """Takes one token from ``key``'s bucket.

        Raises:
            RateLimited: the bucket is empty; ``retry_after_s`` says when one token is back.
        """
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.per_second)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.per_second
                raise RateLimited(
                    f"Too many {self.kind} requests: at most {self.per_second:.3g} per second "
                    f"(burst {self.burst:.0f}). Retry in {wait:.2f} s.",
                    retry_after_s=max(1, math.ceil(wait)),
                )
            self._buckets[key] = (tokens - 1.0, now)
            while len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
