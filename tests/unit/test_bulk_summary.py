"""A bulk run's summary: counts, and its rate once captioning started (start-up excluded)."""

from __future__ import annotations

from typing import Any

from captioner.bulk.plan import STAGES, Summary


def finished(statuses: list[str], began: float, ended: float) -> dict[str, Any]:
    count = len(statuses)
    return {
        "path": [f"{index}.png" for index in range(count)],
        "status": statuses,
        "error": [""] * count,
        **{stage: [0.1] * count for stage in STAGES},
        "caption_began": [began] * count,
        "caption_ended": [ended] * count,
    }


def test_the_rate_once_started_spans_every_workers_batches_and_leaves_start_up_out() -> None:
    summary = Summary(wall_s=20.0)

    summary.add(finished(["captioned"] * 30, began=1000.0, ended=1004.0))
    summary.add(finished(["known"] * 10, began=1002.0, ended=1005.0))  # another actor's batch

    assert summary.captioning_s == 5.0
    assert summary.started_images_per_s == 8.0
    assert summary.images_per_s == 2.0
    assert "captioning took 5.0s of it (8.0 images/s once started)" in summary.lines()[1]


def test_a_run_with_nothing_to_caption_has_no_rate_once_started() -> None:
    summary = Summary(wall_s=1.0)

    assert summary.captioning_s == 0.0
    assert summary.started_images_per_s == 0.0
