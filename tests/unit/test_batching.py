"""Dynamic batching: grouping, lone requests, failures, back-pressure and shutdown (no torch)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import pytest

from captioner.adapters.batching import BatchingCaptioner
from captioner.domain.errors import CaptionerBusy, CaptionerUnavailable, CaptioningFailed
from captioner.domain.model import Caption, DecodedImage, Readiness

WAIT = 5.0  # generous bound for "soon" on a loaded machine; never reached when things work


def image(name: str) -> DecodedImage:
    return DecodedImage("PNG", "image/png", "png", 10, 20, pixels=name)


class FakeBatchModel:
    """A BatchCaptioner that records every batch it is given; can hold, slow down or fail."""

    def __init__(self, seconds_per_batch: float = 0.0) -> None:
        self.seconds_per_batch = seconds_per_batch
        self.batches: list[list[str]] = []
        self.bad: set[str] = set()
        self.slow_to_prepare: dict[str, float] = {}  # image name -> seconds prepare takes
        self.preparing = threading.Event()  # set when a slow prepare begins
        self.prepare_threads: list[str] = []
        self.batch_threads: list[str] = []
        self.started = threading.Event()  # set when a batch begins
        self.gate = threading.Event()  # batches run only while set
        self.gate.set()
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return "fake-batch-model"

    @property
    def batch_sizes(self) -> list[int]:
        with self._lock:
            return [len(batch) for batch in self.batches]

    def readiness(self) -> Readiness:
        return Readiness.ok()

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        return Readiness.ok()

    def prepare(self, image: DecodedImage) -> DecodedImage:
        self.prepare_threads.append(threading.current_thread().name)
        if str(image.pixels) in self.slow_to_prepare:
            self.preparing.set()
            time.sleep(self.slow_to_prepare[str(image.pixels)])
        return replace(image, pixels=f"prepared {image.pixels}")

    def describe_batch(self, images: Sequence[tuple[DecodedImage, str]]) -> list[str]:
        names = [str(img.pixels).removeprefix("prepared ") for img, _ in images]
        with self._lock:
            self.batches.append(names)
        self.batch_threads.append(threading.current_thread().name)
        self.started.set()
        assert self.gate.wait(WAIT), "test never opened the gate"
        time.sleep(self.seconds_per_batch)
        if self.bad.intersection(names):
            raise RuntimeError("this batch holds a bad image")
        return [
            f"{prompt} caption of {name}".strip()
            for name, (_, prompt) in zip(names, images, strict=True)
        ]


@pytest.fixture
def model() -> FakeBatchModel:
    return FakeBatchModel()


@pytest.fixture
def make_batcher(model: FakeBatchModel) -> Iterator[Callable[..., BatchingCaptioner]]:
    made: list[BatchingCaptioner] = []

    def make(**options: float) -> BatchingCaptioner:
        batcher = BatchingCaptioner(model, **options)  # type: ignore[arg-type]
        made.append(batcher)
        return batcher

    yield make
    model.gate.set()
    for batcher in made:
        batcher.close()


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
    model.gate.clear()
    first = submit(batcher, "first")
    assert model.started.wait(WAIT)
    waiting = [submit(batcher, name) for name in "vwxyz"]
    wait_for(lambda: batcher.queue_depth == 5)

    model.gate.set()

    assert first.result(WAIT) == "caption of first"
    assert [f.result(WAIT) for f in waiting] == [f"caption of {n}" for n in "vwxyz"]
    assert model.batch_sizes == [1, 5]


def test_batches_never_exceed_max_batch(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=3, max_wait_ms=50)
    model.gate.clear()
    blocker = submit(batcher, "blocker")
    assert model.started.wait(WAIT)
    waiting = [submit(batcher, str(n)) for n in range(7)]
    wait_for(lambda: batcher.queue_depth == 7)

    model.gate.set()

    assert blocker.result(WAIT) == "caption of blocker"
    assert [f.result(WAIT) for f in waiting] == [f"caption of {n}" for n in range(7)]
    assert model.batch_sizes == [1, 3, 3, 1]


def test_a_lone_request_goes_alone_within_max_wait(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=8, max_wait_ms=20, fill_wait_ms=10_000)

    began = time.monotonic()
    caption = batcher.describe(image("alone"), "").text
    elapsed = time.monotonic() - began

    assert caption == "caption of alone"
    assert model.batch_sizes == [1]
    assert elapsed < 1.0  # max_wait (20 ms) plus scheduling, far from the fill wait


def test_a_burst_arriving_a_little_apart_still_forms_one_batch(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    # 12 requests 10 ms apart: each well within max_wait of the one before, yet the last comes
    # 110 ms after the first, beyond max_wait. Twice: cold, and after the model idled.
    model.seconds_per_batch = 0.05
    batcher = make_batcher(max_batch=12, max_wait_ms=40, fill_wait_ms=400, fill_share=100)
    for burst in range(2):
        results = []
        for number in range(12):
            results.append(submit(batcher, f"{burst}-{number}"))
            time.sleep(0.01)
        assert [f.result(WAIT) for f in results] == [f"caption of {burst}-{n}" for n in range(12)]
        time.sleep(0.5)  # longer than the fill wait: that burst's callers are not coming back

    assert model.batch_sizes == [12, 12]


def test_a_caller_still_preparing_its_image_joins_the_batch(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    model.slow_to_prepare["big photo"] = 0.3  # resizing takes far longer than max_wait
    batcher = make_batcher(max_batch=8, max_wait_ms=20, fill_wait_ms=5000)
    big = submit(batcher, "big photo")
    assert model.preparing.wait(WAIT)

    small = batcher.describe(image("small"), "").text

    assert small == "caption of small"
    assert big.result(WAIT) == "caption of big photo"
    assert model.batch_sizes == [2]


def test_callers_on_their_way_back_refill_a_full_batch_instead_of_splitting(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    # Each client sends its next image 5-20 ms after its caption came back (an HTTP round
    # trip), longer than max_wait: without waiting for them, batches split (1 + 3, 1 + 3, ...).
    model.seconds_per_batch = 0.2
    batcher = make_batcher(max_batch=4, max_wait_ms=1, fill_wait_ms=2000, fill_share=10)

    def client(number: int) -> None:
        for request in range(4):
            batcher.describe(image(f"{number}-{request}"), "")
            time.sleep(0.005 * (number + 1))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(client, range(4)))

    # A first burst may split (1 + 3), which leaves one client a request ahead to the end.
    assert sum(model.batch_sizes) == 16
    assert len(model.batch_sizes) <= 5
    assert model.batch_sizes[1:-1] == [4] * (len(model.batch_sizes) - 2)


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
    model.gate.clear()
    running = submit(batcher, "running")
    assert model.started.wait(WAIT)
    queued = submit(batcher, "queued")
    wait_for(lambda: batcher.queue_depth == 1)

    with pytest.raises(CaptionerBusy, match="busy"):
        batcher.describe(image("one too many"), "")

    model.gate.set()
    assert running.result(WAIT) == "caption of running"
    assert queued.result(WAIT) == "caption of queued"
    assert model.batch_sizes == [1, 1]


def test_a_caption_slower_than_the_timeout_answers_busy_and_the_waiting_job_is_dropped(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=8, max_wait_ms=1, timeout_s=0.2)
    model.gate.clear()
    running = submit(batcher, "running")
    assert model.started.wait(WAIT)

    with pytest.raises(CaptionerBusy, match="longer than"):
        batcher.describe(image("dropped"), "")

    with pytest.raises(CaptionerBusy):
        running.result(WAIT)
    model.gate.set()
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


def test_close_answers_queued_requests_then_stops_the_worker(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    batcher = make_batcher(max_batch=1, max_wait_ms=1)
    model.gate.clear()
    running = submit(batcher, "running")
    assert model.started.wait(WAIT)
    queued = submit(batcher, "queued")
    wait_for(lambda: batcher.queue_depth == 1)

    closer = threading.Thread(target=batcher.close)
    closer.start()
    model.gate.set()
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

    batcher = BatchingCaptioner(model, on_batch=broken_metrics)  # type: ignore[arg-type]
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
    batcher = BatchingCaptioner(ModelLosingCaptions(), timeout_s=5)  # type: ignore[arg-type]
    try:
        with pytest.raises(CaptioningFailed):
            batcher.describe(image("a"), "")
        assert batcher.readiness().ready
    finally:
        batcher.close()


def test_each_caption_reports_its_batch_model_time_not_its_queue_wait(
    make_batcher: Callable[..., BatchingCaptioner], model: FakeBatchModel
) -> None:
    model.seconds_per_batch = 0.2
    batcher = make_batcher(max_batch=2, max_wait_ms=50, fill_wait_ms=0)
    model.gate.clear()
    first = submit_caption(batcher, "first")
    assert model.started.wait(WAIT)
    queued = submit_caption(batcher, "queued")  # waits for the whole first batch
    time.sleep(0.3)
    model.gate.set()

    first_ms, queued_ms = first.result(WAIT).duration_ms, queued.result(WAIT).duration_ms

    assert first_ms >= 450  # held at the gate 300 ms, then 200 ms of "generate"
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
