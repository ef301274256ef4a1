"""A clock tests move by hand: leases lapse and waits pass without sleeping."""

from __future__ import annotations

import time


class ShiftedClock:
    """The real monotonic clock plus time the test adds."""

    def __init__(self) -> None:
        self.added = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.added

    def advance(self, seconds: float) -> None:
        self.added += seconds
