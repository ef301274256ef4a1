"""Rate limits with the ``limits`` library: a moving window kept in this process's memory.

For the upload limit: each replica counts on its own, so N replicas allow up to N times the
rate; wrong keys, where that would matter, are counted in the catalogue (domain/throttle.py).
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class MemoryRateLimiter:
    """At most ``rate`` (like ``10/minute``) hits per identity; an empty rate never limits."""

    def __init__(self, rate: str) -> None:
        self._limit: RateLimitItem | None = parse(rate) if rate else None
        self._window = MovingWindowRateLimiter(MemoryStorage())

    def blocked_for(self, who: str) -> int | None:
        """Seconds until ``who`` may go on, or None when ``who`` is within the rate."""
        if self._limit is None or self._window.test(self._limit, who):
            return None
        return self._wait(self._limit, who)

    def hit(self, who: str) -> int | None:
        """Count one for ``who``; seconds to wait when that was one too many, else None."""
        if self._limit is None or self._window.hit(self._limit, who):
            return None
        return self._wait(self._limit, who)

    def _wait(self, limit: RateLimitItem, who: str) -> int:
        reset = self._window.get_window_stats(limit, who).reset_time
        return max(1, math.ceil(reset - time.time()))
