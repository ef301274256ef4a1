"""Throttling wrong keys: a moving window over counts a shared store keeps."""

from __future__ import annotations

import pytest

from captioner.domain.throttle import Rate, Throttle
from tests.support.clocks import ShiftedClock
from tests.support.fakes import InMemoryCaptionRepository


@pytest.mark.parametrize(
    ("text", "rate"),
    [("10/minute", Rate(10, 60.0)), ("1/second", Rate(1, 1.0)), ("5/day", Rate(5, 86400.0))],
)
def test_a_rate_reads_as_hits_per_window(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate


@pytest.mark.parametrize("text", ["0/minute", "ten/minute", "10/fortnight", "10"])
def test_a_rate_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="10/minute"):
        Rate.parse(text)


def test_no_rate_never_limits() -> None:
    throttle = Throttle(InMemoryCaptionRepository(), "wrong_keys", Rate.parse(""))

    assert [throttle.hit("a") for _ in range(100)] == [None] * 100
    assert throttle.blocked_for("a") is None


def test_the_wait_is_until_the_oldest_counted_hit_leaves_the_window_rounded_up() -> None:
    clock = ShiftedClock()
    throttle = Throttle(InMemoryCaptionRepository(clock=clock), "wrong_keys", Rate(2, 60.0))
    throttle.hit("a")
    clock.advance(20.5)
    throttle.hit("a")

    refused = throttle.hit("a")
    clock.advance(39.0)  # the first hit leaves the window in 0.5 s
    almost = throttle.blocked_for("a")
    clock.advance(1.0)

    assert refused == 40  # 39.5 s, rounded up: Retry-After never sends a client back early
    assert almost == 1
    assert throttle.blocked_for("a") is None
    assert throttle.hit("a") is None
    assert throttle.hit("a") is not None  # the second hit is still in the window
