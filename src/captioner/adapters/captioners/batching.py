"""Dynamic batching for any batch-capable captioner: concurrent requests share one generate."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Protocol

from captioner.domain.errors import (
    CaptionerBusy,
    CaptionerError,
    CaptionerUnavailable,
    CaptioningFailed,
)
from captioner.domain.model import Caption, DecodedImage, Provenance, Readiness

log = logging.getLogger(__name__)


class BatchCaptioner(Protocol):
    """A model that describes several images in one call (what batching wraps)."""

    @property
    def model_name(self) -> str: ...

    @property
    def provenance(self) -> Provenance: ...

    def readiness(self) -> Readiness: ...

    def wait_until_ready(self, timeout: float | None = None) -> Readiness: ...

    def wanted_edge(self) -> int | None:
        """The short edge images should be decoded at for this model; None: every pixel."""
        ...

    def prepare(self, image: DecodedImage) -> DecodedImage:
        """Per-image preprocessing that can run on the caller's thread, off the model thread."""
        ...

    def begin(self, image: DecodedImage, prompt: str) -> None:
        """Start on one prepared image while its batch is still gathering, on the model's
        thread (an image encoder, say); its batch then gives the same captions sooner. May do
        nothing; a failure here only means the batch does the work itself."""
        ...

    def describe_batch(self, images: Sequence[tuple[DecodedImage, str]]) -> list[str]:
        """Describe each (image, prompt) pair; raise if the batch as a whole failed."""
        ...


@dataclass
class _Job:
    image: DecodedImage
    prompt: str
    result: Future[Caption] = field(default_factory=Future)


@dataclass(frozen=True)
class GatherWindow:
    """When a gathering batch stops waiting for company: pure arithmetic on clock readings.

    Times are seconds on one monotonic clock; the batcher's worker asks these methods and
    waits on its queue accordingly, so the rules are tested with a fake clock, not sleeps.
    """

    max_wait_s: float
    expected: int  # callers at once during the last batch: most likely coming back
    longest: float  # never wait past this
    company: float  # max_wait after the latest arrival
    refill: float  # the last batch's callers are on their way back until then

    @classmethod
    def open(
        cls,
        started: float,
        *,
        max_wait_s: float,
        fill_wait_s: float,
        fill_share: float,
        expected: int,
        last_batch_end: float | None,
        last_batch_s: float,
    ) -> GatherWindow:
        """The window of a batch whose first job was taken at ``started``."""
        patience = fill_wait_s
        if last_batch_end is not None:
            patience = min(patience, fill_share * last_batch_s)
        # Counted from the end of the last batch: after the model idled that long, the callers
        # of that batch are not coming back soon and only max_wait applies.
        refill = started if last_batch_end is None else last_batch_end + patience
        return cls(
            max_wait_s=max_wait_s,
            expected=expected,
            longest=started + max(max_wait_s, patience),
            company=started + max_wait_s,
            refill=refill,
        )

    def wait_until(self, now: float, size: int, *, preparing: bool) -> float:
        """How long a batch of ``size`` waits for its next job, as a clock reading."""
        until = self.company
        if size < self.expected:
            until = max(until, self.refill)
        if preparing:
            # Someone is resizing an image right now: it joins within a few ms.
            until = max(until, min(now + self.max_wait_s, self.longest))
        return until

    def closed(self, now: float, until: float, *, preparing: bool) -> bool:
        """After a wait until ``until`` found no job: whether the batch goes as it is."""
        return now >= self.longest or (now >= until and not preparing)

    def joined(self, now: float) -> GatherWindow:
        """A job joined at ``now``: max_wait more for company, so a burst whose requests come
        a few ms apart (each decoded on its own thread) is not cut into 1 + 7."""
        return replace(self, company=max(self.company, min(now + self.max_wait_s, self.longest)))


class BatchingCaptioner:
    """Implements the Captioner port by queueing requests for one model worker thread.

    The worker takes the first waiting request, then up to ``max_batch - 1`` more that arrive
    within ``max_wait_ms``, and runs them as one batch; while the model is busy, new requests
    pile up and form the next batch. A full queue or a caption slower than ``timeout_s``
    answers CaptionerBusy instead of piling up threads.

    A small batch costs nearly as much model time as a full one, so two cases wait longer,
    both bounded by ``fill_wait_ms`` and by a quarter of the last batch's model time:
    - a burst: each arrival gives the batch another ``max_wait_ms`` for company, and so does
      any caller still preparing (resizing) its image, so requests that arrive a few ms
      apart (each decoded on its own thread) are not cut into 1 + 7;
    - a refill: when the model has just finished a batch and fewer requests wait than there
      were callers at once during it, those callers are most likely on their way back (a
      client that got its caption sends its next image). Without waiting for them the
      batches split (1 + 7, 7 + 1, ...) for as long as the load lasts.
    A lone caller, or one after the model was idle, waits ``max_wait_ms`` only.

    While the batch gathers, the model already starts on each image that joined (``begin``:
    BLIP's image encoder, a good share of a caption: see docs/performance.md), so a burst whose
    last requests come late still fills one batch, and the wait for company overlaps model work.

    Each caption's ``duration_ms`` is the model time of the batch it ran in (every image of
    a batch shares one generate, so each reports the whole of it); the wait in the queue
    and for company is not counted.
    """

    def __init__(
        self,
        inner: BatchCaptioner,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 64,
        timeout_s: float = 120.0,
        fill_wait_ms: float = 200.0,
        on_batch: Callable[[int], None] | None = None,
        fill_share: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._inner = inner
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._fill_wait_s = fill_wait_ms / 1000
        # Waiting for company never costs more than this share of the last batch's model time.
        self._fill_share = fill_share
        self._timeout_s = timeout_s
        self._on_batch = on_batch
        self._clock = clock
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        # Demand: callers inside describe() now, the most at once since the last batch began
        # gathering, and those still preparing their image (sure to arrive within ms).
        # Written by callers and the worker, so under a lock.
        self._demand_lock = threading.Lock()
        self._in_flight = 0
        self._peak = 0
        self._preparing = 0
        # Only the worker thread reads and writes these.
        self._last_batch_end: float | None = None
        self._last_batch_s = 0.0
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="captioner-batcher", daemon=True)
        self._worker.start()

    @property
    def model_name(self) -> str:
        return self._inner.model_name

    @property
    def provenance(self) -> Provenance:
        return self._inner.provenance

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        """Whether the model worker thread is alive (False after ``close``)."""
        return self._worker.is_alive()

    def readiness(self) -> Readiness:
        if self._closed:
            return Readiness(False, "the captioner is shut down")
        if not self._worker.is_alive():
            return Readiness(False, "the model worker stopped; restart the server")
        return self._inner.readiness()

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        return self._inner.wait_until_ready(timeout)

    def wanted_edge(self) -> int | None:
        return self._inner.wanted_edge()

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        if self._closed:
            raise CaptionerUnavailable("The captioner is shutting down; try again shortly.")
        with self._demand_lock:
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
            self._preparing += 1
        try:
            return self._describe(image, prompt)
        finally:
            with self._demand_lock:
                self._in_flight -= 1

    def close(self) -> None:
        """Stop the worker after the requests already queued."""
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout=self._timeout_s)

    def _describe(self, image: DecodedImage, prompt: str) -> Caption:
        try:
            # Preprocessing runs here, on the caller's thread, so the model never waits for PIL.
            job = _Job(self._inner.prepare(image), prompt)
            self._queue.put_nowait(job)
        except queue.Full:
            raise CaptionerBusy(
                "The captioner is busy (too many images waiting); try again shortly.",
                retry_after_s=max(1, int(self._timeout_s / 10)),
            ) from None
        finally:
            with self._demand_lock:
                self._preparing -= 1
        try:
            return job.result.result(timeout=self._timeout_s)
        except FutureTimeout:
            # Not started yet: drop it. Already running: its result is simply discarded.
            job.result.cancel()
            raise CaptionerBusy(
                f"Describing the image took longer than {self._timeout_s:g} s; try again later.",
                retry_after_s=max(1, int(self._timeout_s / 4)),
            ) from None

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._gather(first)
            live = [job for job in batch if job.result.set_running_or_notify_cancel()]
            try:
                if live:
                    began = self._clock()
                    self._describe_batch(live)
                    self._last_batch_end = self._clock()
                    self._last_batch_s = self._last_batch_end - began
            except Exception as error:
                # The worker must outlive any bug here: a dead worker would leave every later
                # upload waiting for its timeout.
                log.exception("model worker failed on a batch of %d", len(live))
                for job in live:
                    if not job.result.done():
                        job.result.set_exception(_as_domain_error(error))
            if stop:
                break
        self._refuse_leftovers()

    def _refuse_leftovers(self) -> None:
        """After close: answer whatever was still queued instead of letting it time out."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.result.set_running_or_notify_cancel():
                job.result.set_exception(
                    CaptionerUnavailable("The captioner is shutting down; try again shortly.")
                )

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job and those that join it; True when the stop sentinel was met."""
        with self._demand_lock:
            expected = min(self._max_batch, self._peak)
            self._peak = self._in_flight
        window = GatherWindow.open(
            self._clock(),
            max_wait_s=self._max_wait_s,
            fill_wait_s=self._fill_wait_s,
            fill_share=self._fill_share,
            expected=expected,
            last_batch_end=self._last_batch_end,
            last_batch_s=self._last_batch_s,
        )
        batch = [first]
        self._begin(first)
        while len(batch) < self._max_batch:
            now = self._clock()
            until = window.wait_until(now, len(batch), preparing=self._preparing > 0)
            try:
                job = self._queue.get(timeout=max(0.0, until - now))
            except queue.Empty:
                if window.closed(self._clock(), until, preparing=self._preparing > 0):
                    break
                continue
            if job is None:
                return batch, True
            batch.append(job)
            self._begin(job)
            window = window.joined(self._clock())
        return batch, False

    def _begin(self, job: _Job) -> None:
        """The model starts on a job while its batch gathers: callers arriving meanwhile join
        this batch (they are queued when the window is next looked at), and a lone caller's
        wait for company costs nothing."""
        if job.result.cancelled():
            return
        try:
            self._inner.begin(job.image, job.prompt)
        except Exception:  # the batch does the work itself, and reports what fails
            log.warning("starting early on an image failed; its batch will retry", exc_info=True)

    def _describe_batch(self, batch: list[_Job]) -> None:
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch))
            except Exception:  # metrics must never cost a caption
                log.exception("on_batch callback failed")
        log.debug("describing a batch of %d", len(batch))
        try:
            # Model time on the batcher's clock, so tests measure it without sleeping.
            began = self._clock()
            texts = self._inner.describe_batch([(job.image, job.prompt) for job in batch])
            batch_ms = (self._clock() - began) * 1000
            if len(texts) != len(batch):
                raise RuntimeError(f"{len(texts)} captions for a batch of {len(batch)} images")
        except Exception as error:
            if len(batch) == 1:
                batch[0].result.set_exception(_as_domain_error(error))
                return
            # One bad image must not fail its batch mates: retry each alone.
            log.warning("batch of %d failed (%s); retrying one by one", len(batch), error)
            for job in batch:
                try:
                    began = self._clock()
                    text = self._inner.describe_batch([(job.image, job.prompt)])[0]
                    job.result.set_result(Caption(text, (self._clock() - began) * 1000))
                except Exception as single_error:
                    job.result.set_exception(_as_domain_error(single_error))
            return
        for job, text in zip(batch, texts, strict=True):
            job.result.set_result(Caption(text, batch_ms))


def _as_domain_error(error: Exception) -> Exception:
    if isinstance(error, CaptionerError):
        return error
    return CaptioningFailed(f"The model failed to describe this image ({type(error).__name__}).")
