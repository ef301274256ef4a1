"""Throttling wrong guesses: a moving window over hits counted where every replica sees them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from captioner.domain.ports import RecentHits

_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(r"^([1-9][0-9]*)/(second|minute|hour|day)$")


@dataclass(frozen=True)
class Rate:
    """At most ``limit`` hits in any ``window_s`` seconds."""

    limit: int
    window_s: float

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """``10/minute`` as a Rate; an empty text is no rate (never limits)."""
        if not text:
            return None
        match = _RATE.match(text.strip())
        if match is None:
            raise ValueError(f"a rate looks like 10/minute (a second, minute, hour, day): {text!r}")
        return cls(int(match.group(1)), _SECONDS[match.group(2)])


class Throttle:
    """The RateLimiter port over shared counts: N replicas over one catalogue allow one rate,
    not N times it."""

    def __init__(self, hits: RecentHits, counter: str, rate: Rate | None) -> None:
        self._hits = hits
        self._counter = counter  # what is counted, so several throttles can share one store
        self._rate = rate

    def blocked_for(self, who: str) -> int | None:
        """Seconds until ``who`` may go on, or None when ``who`` is within the rate."""
        if self._rate is None:
            return None
        return _whole(self._hits.wait_s(self._counter, who, self._rate.limit, self._rate.window_s))

    def hit(self, who: str) -> int | None:
        """Count one for ``who``; seconds to wait when that was one too many, else None."""
        if self._rate is None:
            return None
        rate = self._rate
        return _whole(self._hits.add_hit(self._counter, who, rate.limit, rate.window_s))


def _whole(wait_s: float | None) -> int | None:
    # Retry-After takes whole seconds; rounding down would send the client back too early.
    return None if wait_s is None else max(1, math.ceil(wait_s))
