"""Working the caption queue: take a batch under leases, caption it, keep the captions; and the
loop a `captioner worker` (or a server with a model, when idle) runs."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from captioner.domain.errors import CaptionerError, RetryLater, StoredFileMissing
from captioner.domain.model import FAILED, Caption, CaptionDone, Claim, QueuedCaption
from captioner.domain.one_run_per_key import LeaseRenewals
from captioner.domain.ports import (
    Captioner,
    CaptionQueue,
    DescribeObserver,
    ImageDecoder,
    ImageStore,
)

log = logging.getLogger(__name__)

_BATCHES_IN_FLIGHT = 2


@dataclass(frozen=True)
class QueuePolicy:
    """How the queue is worked: batch size, retries, and how often workers look and beat."""

    max_attempts: int = 3
    retry_backoff_s: float = 10.0  # doubled after each failed attempt
    batch: int = 8
    poll_s: float = 1.0  # how often an idle worker looks for work
    heartbeat_s: float = 5.0
    stuck_s: float = 600.0  # oldest pending older than this: /readyz says the queue is stuck

    @property
    def alive_s(self) -> float:
        """A worker is alive while its heartbeat is younger than this (three missed beats)."""
        return 3 * self.heartbeat_s

    def retry_in_s(self, attempts_before: int) -> float:
        return float(self.retry_backoff_s * 2**attempts_before)


class QueueWork:
    """One batch at a time: claimed with leases, renewed while the model runs, written and
    released in one transaction. A model error counts an attempt of that image only; an
    unavailable model gives the batch back without counting anything."""

    def __init__(
        self,
        captioner: Captioner,
        decoder: ImageDecoder,
        store: ImageStore,
        queue: CaptionQueue,
        observer: DescribeObserver,
        lease_s: float,
        policy: QueuePolicy,
    ) -> None:
        self._captioner = captioner
        self._decoder = decoder
        self._store = store
        self._queue = queue
        self._observer = observer
        self._lease_s = lease_s
        self._policy = policy
        self._leases = LeaseRenewals(queue, lease_s)
        # Every image of a batch goes to the model at once, so the batcher (or the model
        # server) can run them together.
        self._pool = ThreadPoolExecutor(
            policy.batch * _BATCHES_IN_FLIGHT, thread_name_prefix="captioner-queue-image"
        )

    def round(self) -> int:
        """Caption one batch; how many records were taken (0: nothing due). Raises the
        RetryLater that kept the model from running (the batch is given back first)."""
        taken = self._queue.take(self._captioner.model_name, self._lease_s, self._policy.batch)
        if not taken:
            return 0
        with self._leases.kept([item.claim for item in taken]):
            outcomes = list(self._pool.map(self._caption, taken))
        done: list[CaptionDone] = []
        given_back: list[Claim] = []
        unavailable: RetryLater | None = None
        for item, outcome in zip(taken, outcomes, strict=True):
            if isinstance(outcome, Caption):
                done.append(self._done(item, outcome))
            elif isinstance(outcome, RetryLater):
                given_back.append(item.claim)
                unavailable = outcome
            else:
                self._failed(item, outcome)
        if done:
            self._queue.finish(done)
            for _ in done:
                self._observer.caption_generated()
        if given_back:
            self._queue.release(given_back)
        if unavailable is not None:
            raise unavailable
        return len(taken)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _caption(self, item: QueuedCaption) -> Caption | Exception:
        try:
            try:
                content = self._store.open(item.record.path)
            except FileNotFoundError:
                return StoredFileMissing(f"the file {item.record.path} is missing")
            with content:
                image = self._decoder.decode(content)
            return self._captioner.describe(image, item.record.prompt)
        except Exception as error:  # whatever the model raised is this image's failure
            return error

    def _done(self, item: QueuedCaption, caption: Caption) -> CaptionDone:
        prompt = item.record.prompt
        return CaptionDone(
            claim=item.claim,
            record_id=item.record.id,
            description=caption.text,
            provenance=self._captioner.provenance.with_setting("prompt", prompt),
            duration_ms=round(caption.duration_ms, 1),
        )

    def _failed(self, item: QueuedCaption, error: Exception) -> None:
        reason = str(error) or type(error).__name__
        if not isinstance(error, CaptionerError):
            log.warning("model failed on queued image %d", item.record.id, exc_info=error)
        record = self._queue.fail(
            item, reason, self._policy.max_attempts, self._policy.retry_in_s(item.record.attempts)
        )
        if record is not None and record.status == FAILED:
            log.warning("image %d failed after %d attempts: %s", record.id, record.attempts, reason)


class QueueWorker:
    """Works the queue until stopped: a batch at a time while there is work, a look every
    ``poll_s`` when there is none, a pause when the model is unavailable; a heartbeat row in
    the catalogue says it is alive (GET /queue, /readyz of model-less servers)."""

    def __init__(
        self,
        work: QueueWork,
        queue: CaptionQueue,
        name: str,
        model: str,
        policy: QueuePolicy,
        may_work: Callable[[], bool] = lambda: True,
    ) -> None:
        self.work = work  # one round of it at a time: `work.round()`
        self._queue = queue
        self.name = name
        self._model = model
        self._policy = policy
        self._may_work = may_work
        self.taken = 0  # records taken from the queue (captioned, or an attempt counted)
        self._taken_lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        beat = threading.Thread(
            target=self._beat, args=(stop,), name="captioner-heartbeat", daemon=True
        )
        beat.start()
        # Two batches in flight: while the model runs one, the other is read, decoded and
        # written, so the model does not wait between batches.
        loops = [
            threading.Thread(target=self._loop, args=(stop,), name=f"captioner-queue-{n}")
            for n in range(_BATCHES_IN_FLIGHT)
        ]
        try:
            for loop in loops:
                loop.start()
            for loop in loops:
                loop.join()
        finally:
            stop.set()
            for loop in loops:
                if loop.ident is not None:
                    loop.join()
            beat.join()
            self.work.close()
            with contextlib.suppress(CaptionerError):  # else its heartbeat goes stale
                self._queue.forget_worker(self.name)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._may_work():
                stop.wait(self._policy.poll_s)
                continue
            try:
                taken = self.work.round()
            except RetryLater as error:
                log.warning("queue paused: %s", error)
                stop.wait(max(self._policy.poll_s, self._policy.retry_backoff_s))
                continue
            except CaptionerError as error:
                log.warning("queue round failed: %s", error)
                taken = 0
            with self._taken_lock:
                self.taken += taken
            if taken == 0:
                stop.wait(self._policy.poll_s)

    def _beat(self, stop: threading.Event) -> None:
        while True:
            try:
                self._queue.heartbeat(self.name, self._model)
            except CaptionerError as error:
                log.warning("worker heartbeat not written: %s", error)
            if stop.wait(self._policy.heartbeat_s):
                return
