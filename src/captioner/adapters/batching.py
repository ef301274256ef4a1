"""Dynamic batching for any batch-capable captioner: concurrent requests share one generate."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from captioner.domain.errors import CaptionerBusy, CaptionerError, CaptioningFailed
from captioner.domain.model import DecodedImage, Readiness
from captioner.domain.ports import BatchCaptioner

log = logging.getLogger(__name__)


@dataclass
class _Job:
    image: DecodedImage
    prompt: str
    result: Future[str] = field(default_factory=Future)


class BatchingCaptioner:
    """Implements the Captioner port by queueing requests for one model worker thread.

    The worker takes the first waiting request, then up to ``max_batch - 1`` more that arrive
    within ``max_wait_ms``, and runs them as one batch; while the model is busy, new requests
    pile up and form the next batch. A full queue or a caption slower than ``timeout_s``
    answers CaptionerBusy instead of piling up threads.
    """

    def __init__(
        self,
        inner: BatchCaptioner,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 64,
        timeout_s: float = 120.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._inner = inner
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._timeout_s = timeout_s
        self._on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._worker = threading.Thread(target=self._run, name="captioner-batcher", daemon=True)
        self._worker.start()

    @property
    def model_name(self) -> str:
        return self._inner.model_name

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def readiness(self) -> Readiness:
        return self._inner.readiness()

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        return self._inner.wait_until_ready(timeout)

    def describe(self, image: DecodedImage, prompt: str) -> str:
        job = _Job(self._inner.prepare(image), prompt)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise CaptionerBusy(
                "The captioner is busy (too many images waiting); try again shortly.",
                retry_after_s=max(1, int(self._timeout_s / 10)),
            ) from None
        try:
            return job.result.result(timeout=self._timeout_s)
        except FutureTimeout:
            # Not started yet: drop it. Already running: its result is simply discarded.
            job.result.cancel()
            raise CaptionerBusy(
                f"Describing the image took longer than {self._timeout_s:g} s; try again later.",
                retry_after_s=max(1, int(self._timeout_s / 4)),
            ) from None

    def close(self) -> None:
        """Stop the worker after the requests already queued."""
        self._queue.put(None)
        self._worker.join(timeout=self._timeout_s)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self._max_wait_s
            stop = False
            while len(batch) < self._max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            live = [job for job in batch if job.result.set_running_or_notify_cancel()]
            if live:
                self._describe(live)
            if stop:
                return

    def _describe(self, batch: list[_Job]) -> None:
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            texts = self._inner.describe_batch([(job.image, job.prompt) for job in batch])
        except Exception as error:
            if len(batch) == 1:
                batch[0].result.set_exception(_as_domain_error(error))
                return
            # One bad image must not fail its batch mates: retry each alone.
            log.warning("batch of %d failed (%s); retrying one by one", len(batch), error)
            for job in batch:
                try:
                    job.result.set_result(self._inner.describe_batch([(job.image, job.prompt)])[0])
                except Exception as single_error:
                    job.result.set_exception(_as_domain_error(single_error))
            return
        for job, text in zip(batch, texts, strict=True):
            job.result.set_result(text)


def _as_domain_error(error: Exception) -> Exception:
    if isinstance(error, CaptionerError):
        return error
    return CaptioningFailed(f"The model failed to describe this image ({type(error).__name__}).")
