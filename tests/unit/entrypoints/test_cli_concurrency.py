"""`caption` and `recaption` run their items through one helper: results in input order,
failures counted, a bounded number in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from captioner.entrypoints.cli.describe import run_concurrently


def test_outcomes_are_reported_in_input_order_and_failures_counted() -> None:
    in_flight, most = 0, 0
    lock = threading.Lock()

    def work(item: int) -> int:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.002 * (10 - item))  # later items finish first
        with lock:
            in_flight -= 1
        if item % 4 == 3:
            raise ValueError(f"item {item} broke")
        return item * item

    reported: list[tuple[int, int | Exception]] = []
    failed = run_concurrently(range(10), work, lambda i, o: reported.append((i, o)), workers=2)

    assert [item for item, _ in reported] == list(range(10))
    assert [o for _, o in reported if not isinstance(o, Exception)] == [0, 1, 4, 16, 25, 36, 64, 81]
    assert [str(o) for _, o in reported if isinstance(o, Exception)] == [
        "item 3 broke",
        "item 7 broke",
    ]
    assert failed == 2
    assert most <= 2


def test_an_outcome_returned_as_an_exception_counts_as_a_failure() -> None:
    failed = run_concurrently(
        ["a", "b"], lambda item: OSError(item) if item == "b" else item, lambda *_: None, 1
    )

    assert failed == 1


def test_no_more_than_two_items_per_worker_are_drawn_ahead_of_the_reports() -> None:
    drawn = 0

    def items() -> Iterator[int]:
        nonlocal drawn
        for item in range(100):
            drawn += 1
            yield item

    ahead: list[int] = []
    run_concurrently(items(), lambda item: item, lambda item, _: ahead.append(drawn - item), 3)

    assert max(ahead) <= 2 * 3
