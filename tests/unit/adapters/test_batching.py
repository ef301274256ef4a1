"""Dynamic batching: grouping, lone requests, failures, back-pressure and shutdown (no torch)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from captioner.adapters.captioners.batching import BatchingCaptioner, GatherWindow
from captioner.domain.errors import CaptionerBusy, CaptionerUnavailable, CaptioningFailed
from captioner.domain.model import Caption, DecodedImage
from tests.support.clocks import ShiftedClock
from tests.support.fakes import FakeBatchModel

WAIT = 5.0  # generous bound for "soon" on a loaded machine; never reached when things work


def image(name: str) -> DecodedImage:
    return DecodedImage("PNG", "image/png", "png", 10, 20, pixels=name)


@pytest.fixture
def model() -> FakeBatchModel:
    return FakeBatchModel()


@pytest.fixture
def make_batcher(model: FakeBatchModel) -> Iterator[Callable[..., BatchingCaptioner]]:
    made: list[BatchingCaptioner] = []

    def make(**options: Any) -> BatchingCaptioner:
        batcher = BatchingCaptioner(model, **options)
        made.append(batcher)
        return batcher

    yield make
    model.release.set()
    model.prepare_release.set()
    model.begin_release.set()
    for batcher in made:
        batcher.close()


def open_window(
    *,
    started: float,
    max_wait_s: float,
    fill_wait_s: float,
    fill_share: float = 0.25,
    expected: int = 0,
    last_batch_end: float | None = None,
    last_batch_s: float = 0.0,
) -> GatherWindow:
    return GatherWindow.open(
        started,
        max_wait_s=max_wait_s,
        fill_wait_s=fill_wait_s,
        fill_share=fill_share,
        expected=expected,
        last_batch_end=last_batch_end,
        last_batch_s=last_batch_s,
    )


def describe_all(batcher: BatchingCaptioner, names: Sequence[str]) -> list[str]:
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return list(pool.map(lambda name: batcher.describe(image(name), "").text, names))


def submit(batcher: BatchingCaptioner, name: str, prompt: str = "") -> Future[str]:
    result: Future[str] = Future()

    def run() -> None:
        try:
            result.set_result(batcher.describe(image(name), prompt).text)
        except Exception as error:
            result.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return result


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def test_concurrent_requests_are_described_in_one_batch(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=4, max_wait_ms=2000)

    captions = describe_all(batcher, ["a", "b", "c", "d"])

    assert captions == ["caption of a", "caption of b", "caption of c", "caption of d"]
    assert model.batch_sizes == [4]


def test_requests_arriving_while_the_model_is_busy_form_the_next_batch(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=8, max_wait_ms=1)
    model.hold()
    first = submit(batcher, "first")
    assert model.started.wait(WAIT)
    waiting = [submit(batcher, name) for name in "vwxyz"]
    wait_for(lambda: batcher.queue_depth == 5)

    model.release.set()

    assert first.result(WAIT) == "caption of first"
    assert [f.result(WAIT) for f in waiting] == [f"caption of {n}" for n in "vwxyz"]
    assert model.batch_sizes == [1, 5]


def test_batches_never_exceed_max_batch(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=3, max_wait_ms=50)
    model.hold()
    blocker = submit(batcher, "blocker")
    assert model.started.wait(WAIT)
    waiting = [submit(batcher, str(n)) for n in range(7)]
    wait_for(lambda: batcher.queue_depth == 7)

    model.release.set()

    assert blocker.result(WAIT) == "caption of blocker"
    assert [f.result(WAIT) for f in waiting] == [f"caption of {n}" for n in range(7)]
    assert model.batch_sizes == [1, 3, 3, 1]


def test_a_lone_request_goes_alone_within_max_wait() -> None:
    window = open_window(started=100.0, max_wait_s=0.02, fill_wait_s=10.0)

    until = window.wait_until(100.0, size=1, preparing=False)

    assert until == pytest.approx(100.02)  # max_wait, far from the fill wait
    assert window.closed(100.02, until, preparing=False)


def test_each_arrival_gives_a_burst_another_max_wait_up_to_the_fill_wait() -> None:
    # 12 requests 10 ms apart: each well within max_wait (40 ms) of the one before, yet the
    # last comes 110 ms after the first, beyond max_wait; the fill wait (400 ms) caps it all.
    window = open_window(started=0.0, max_wait_s=0.04, fill_wait_s=0.4)
    for size in range(1, 12):
        now = size * 0.01
        assert now < window.wait_until(now, size, preparing=False)
        window = window.joined(now)

    assert window.wait_until(0.11, 12, preparing=False) == pytest.approx(0.15)
    for _ in range(100):
        window = window.joined(window.company)
    assert window.company == pytest.approx(0.4)  # never past the longest wait


def test_after_the_model_idled_a_burst_waits_max_wait_only() -> None:
    # The last batch ended 1 s ago, longer than the fill wait: its callers are not coming back.
    window = open_window(
        started=10.0, max_wait_s=0.04, fill_wait_s=0.4, expected=4, last_batch_end=9.0
    )

    until = window.wait_until(10.0, size=1, preparing=False)

    assert until == pytest.approx(10.04)


def test_callers_of_the_last_batch_are_waited_for_until_the_batch_is_as_full_as_before() -> None:
    # Four callers at once during a 200 ms batch that just ended: they come back 5-20 ms later,
    # longer than max_wait (1 ms), and wait a share of the model time (here 50 ms) for them.
    window = open_window(
        started=5.0,
        max_wait_s=0.001,
        fill_wait_s=2.0,
        fill_share=0.25,
        expected=4,
        last_batch_end=5.0,
        last_batch_s=0.2,
    )

    assert window.wait_until(5.0, size=1, preparing=False) == pytest.approx(5.05)
    assert window.wait_until(5.02, size=3, preparing=False) == pytest.approx(5.05)
    assert window.wait_until(5.02, size=4, preparing=False) == pytest.approx(5.001)
    assert window.closed(5.05, 5.05, preparing=False)


def test_a_caller_still_preparing_its_image_is_waited_for_up_to_the_longest_wait() -> None:
    window = open_window(started=0.0, max_wait_s=0.02, fill_wait_s=5.0)

    # Past max_wait, and nobody in the queue: a caller resizing its image keeps the batch open.
    until = window.wait_until(0.3, size=1, preparing=True)

    assert until == pytest.approx(0.32)
    assert not window.closed(0.32, until, preparing=True)
    assert window.closed(0.32, until, preparing=False)
    assert window.closed(5.0, until, preparing=True)  # but never past the longest wait
    assert window.wait_until(4.99, size=1, preparing=True) == pytest.approx(5.0)


def test_a_caller_still_preparing_its_image_joins_the_batch(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    # max_wait is 1 ms: only the "someone is preparing" rule keeps the batch open for "big".
    model.held_prepare.add("big photo")
    batcher = make_batcher(max_batch=8, max_wait_ms=1, fill_wait_ms=5000)
    big = submit(batcher, "big photo")
    assert model.preparing.wait(WAIT)
    small = submit(batcher, "small")
    wait_for(lambda: "small" in model.prepared and batcher.queue_depth == 0)

    model.prepare_release.set()

    assert small.result(WAIT) == "caption of small"
    assert big.result(WAIT) == "caption of big photo"
    assert model.batch_sizes == [2]


def test_the_batcher_reads_its_deadlines_from_the_clock_it_is_given(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    # A clock that jumps an hour per reading: every wait is over as soon as it is asked for,
    # so each request goes alone although max_wait is a minute.
    readings = itertools.count(step=3600.0)
    batcher = make_batcher(max_batch=8, max_wait_ms=60_000, clock=lambda: next(readings))

    assert batcher.describe(image("a"), "").text == "caption of a"
    assert batcher.describe(image("b"), "").text == "caption of b"
    assert model.batch_sizes == [1, 1]


def test_one_failing_image_does_not_fail_its_batch_mates(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    model.bad.add("bad")
    batcher = make_batcher(max_batch=3, max_wait_ms=2000)
    results = [submit(batcher, name) for name in ("good1", "bad", "good2")]

    assert results[0].result(WAIT) == "caption of good1"
    assert results[2].result(WAIT) == "caption of good2"
    with pytest.raises(CaptioningFailed, match="RuntimeError"):
        results[1].result(WAIT)
    assert model.batch_sizes == [3, 1, 1, 1]


def test_each_image_keeps_its_own_prompt_in_a_shared_batch(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=2, max_wait_ms=2000)
    plain = submit(batcher, "a")
    asked = submit(batcher, "b", prompt="a photo of")

    assert plain.result(WAIT) == "caption of a"
    assert asked.result(WAIT) == "a photo of caption of b"
    assert model.batch_sizes == [2]


def test_a_full_queue_answers_busy_at_once(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=8, max_wait_ms=1, max_queue=1)
    model.hold()
    running = submit(batcher, "running")
    assert model.started.wait(WAIT)
    queued = submit(batcher, "queued")
    wait_for(lambda: batcher.queue_depth == 1)

    with pytest.raises(CaptionerBusy, match="busy"):
        batcher.describe(image("one too many"), "")

    model.release.set()
    assert running.result(WAIT) == "caption of running"
    assert queued.result(WAIT) == "caption of queued"
    assert model.batch_sizes == [1, 1]


def test_a_caption_slower_than_the_timeout_answers_busy_and_the_waiting_job_is_dropped(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=8, max_wait_ms=1, timeout_s=0.2)
    model.hold()
    running = submit(batcher, "running")
    assert model.started.wait(WAIT)

    with pytest.raises(CaptionerBusy, match="longer than"):
        batcher.describe(image("dropped"), "")

    with pytest.raises(CaptionerBusy):
        running.result(WAIT)
    model.release.set()
    batcher.close()
    assert [name for batch in model.batches for name in batch] == ["running"]


def test_preprocessing_runs_on_the_callers_thread_and_generate_on_the_model_thread(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher()
    caller = threading.current_thread().name

    batcher.describe(image("x"), "")

    assert model.prepare_threads == [caller]
    assert model.batch_threads == ["captioner-batcher"]


def test_the_model_starts_on_each_image_on_its_thread_before_the_batch_runs(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=4, max_wait_ms=2000)

    describe_all(batcher, ["a", "b", "c", "d"])

    assert sorted(model.begun) == ["a", "b", "c", "d"]
    assert model.begin_threads == ["captioner-batcher"] * 4
    assert model.batch_sizes == [4]


def test_requests_arriving_while_the_model_starts_on_the_first_join_its_batch(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    # After an idle model only max_wait (1 ms here) is waited for company; the three late
    # requests come while the model works on the first image, and join it all the same.
    batcher = make_batcher(max_batch=8, max_wait_ms=1, fill_wait_ms=0)
    model.begin_release.clear()
    first = submit(batcher, "first")
    assert model.beginning.wait(WAIT)
    late = [submit(batcher, name) for name in ("late-1", "late-2", "late-3")]
    wait_for(lambda: batcher.queue_depth == 3)

    model.begin_release.set()

    assert first.result(WAIT) == "caption of first"
    assert [future.result(WAIT) for future in late] == [
        "caption of late-1",
        "caption of late-2",
        "caption of late-3",
    ]
    assert model.batch_sizes == [4]


def test_a_failure_to_start_early_costs_no_caption(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    model.bad_begin.add("odd")
    batcher = make_batcher(max_batch=2, max_wait_ms=2000)

    assert describe_all(batcher, ["odd", "fine"]) == ["caption of odd", "caption of fine"]
    assert sorted(model.begun) == ["fine", "odd"]
    assert batcher.readiness().ready


def test_close_answers_queued_requests_then_stops_the_worker(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=1, max_wait_ms=1)
    model.hold()
    running = submit(batcher, "running")
    assert model.started.wait(WAIT)
    queued = submit(batcher, "queued")
    wait_for(lambda: batcher.queue_depth == 1)

    closer = threading.Thread(target=batcher.close)
    closer.start()
    model.release.set()
    closer.join(WAIT)

    assert running.result(WAIT) == "caption of running"
    assert queued.result(WAIT) == "caption of queued"
    assert not batcher.running
    assert not batcher.readiness().ready
    with pytest.raises(CaptionerUnavailable, match="shutting down"):
        batcher.describe(image("late"), "")


def test_a_failing_batch_callback_costs_no_caption_and_the_worker_lives_on(
    model: FakeBatchModel,
) -> None:
    def broken_metrics(size: int) -> None:
        raise ValueError("metrics backend down")

    batcher = BatchingCaptioner(model, on_batch=broken_metrics)
    try:
        assert batcher.describe(image("a"), "").text == "caption of a"
        assert batcher.describe(image("b"), "").text == "caption of b"
        assert batcher.readiness().ready
    finally:
        batcher.close()


class ModelLosingCaptions(FakeBatchModel):
    """A model returning fewer captions than images: a bug, not a reason to hang callers."""

    def describe_batch(self, images: Sequence[tuple[DecodedImage, str]]) -> list[str]:
        return super().describe_batch(images)[:-1]


def test_a_model_returning_too_few_captions_fails_those_requests_not_the_worker() -> None:
    batcher = BatchingCaptioner(ModelLosingCaptions(), timeout_s=5)
    try:
        with pytest.raises(CaptioningFailed):
            batcher.describe(image("a"), "")
        assert batcher.readiness().ready
    finally:
        batcher.close()


class GenerateTakes200ms(FakeBatchModel):
    """Each batch, once released, spends 200 ms of the batcher's clock in "generate"."""

    def __init__(self, clock: ShiftedClock) -> None:
        super().__init__()
        self.clock = clock

    def describe_batch(self, images: Sequence[tuple[DecodedImage, str]]) -> list[str]:
        texts = super().describe_batch(images)
        self.clock.advance(0.2)
        return texts


def test_each_caption_reports_its_batch_model_time_not_its_queue_wait() -> None:
    clock = ShiftedClock()
    model = GenerateTakes200ms(clock)
    batcher = BatchingCaptioner(model, max_batch=2, max_wait_ms=50, fill_wait_ms=0, clock=clock)
    try:
        model.hold()
        first = submit_caption(batcher, "first")
        assert model.started.wait(WAIT)
        queued = submit_caption(batcher, "queued")  # waits for the whole first batch
        wait_for(lambda: batcher.queue_depth == 1)
        clock.advance(0.3)  # the first batch sits in the model 300 ms
        model.release.set()

        first_ms, queued_ms = first.result(WAIT).duration_ms, queued.result(WAIT).duration_ms
    finally:
        model.release.set()
        batcher.close()

    assert first_ms >= 500  # held 300 ms, then 200 ms of "generate"
    assert 200 <= queued_ms < first_ms  # its own batch's time, not its wait behind the first


def submit_caption(batcher: BatchingCaptioner, name: str) -> Future[Caption]:
    result: Future[Caption] = Future()

    def run() -> None:
        try:
            result.set_result(batcher.describe(image(name), ""))
        except Exception as error:
            result.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return result
