"""One model run per key: the same bytes, model and prompt are captioned once, across threads,
processes and replicas.

Three mechanisms, one per reach: a future per key shares one run between the threads of a
process; a leased claim in the catalogue shares it between processes and machines; striped
locks by digest keep storing and deleting the same bytes from interleaving within a process.
Across replicas nothing orders a store and a delete of the same bytes: deletes mark themselves
in the catalogue, and an upload that a delete could have met re-checks its file
(``file_may_be_gone``, ``keep_file_after_commit``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import BinaryIO

from captioner.domain.errors import CaptionerBusy, CaptionerError
from captioner.domain.model import (
    CaptionKey,
    Claim,
    DecodedImage,
    DeletesSeen,
    Description,
    ImageDigest,
    ImageRecord,
)
from captioner.domain.ports import CaptionClaims, CaptionRepository, ImageStore

DEFAULT_CLAIM_LEASE_S = 30.0
DEFAULT_CLAIM_WAIT_S = 120.0
_BYTES_LOCK_STRIPES = 64
# How long the marks of a finished delete stay (a shorter time would let an upload that ran
# longer than half of it skip a re-check it needs; see file_may_be_gone).
DELETE_MARKS_KEPT_S = 86_400.0
# After how long a delete still marked in flight is taken for dead (its replica was killed,
# or the store failed it): far beyond any delete's own time, so its file is settled.
DELETE_STALE_S = 3_600.0

# What runs under a key's claim: caption the decoded image and keep the record.
RunUnderClaim = Callable[[DecodedImage, Claim], Description]
# One image's outcome in a batch: its record, or the error that image met (never the batch's).
Outcome = Description | Exception
# What runs under a batch's claims: each image's outcome, in order.
RunBatchUnderClaims = Callable[[Sequence[tuple[DecodedImage, Claim]]], Sequence[Outcome]]
# Model batches in flight at once: while the model runs one, the other's records are written.
_BATCHES_IN_FLIGHT = 2


class OneRunPerKey:
    """Runs ``run`` for a key at most once at a time anywhere; every other asker gets its record.

    ``catalogue`` holds the records and the claims (the CaptionClaims part of the repository).
    """

    def __init__(
        self,
        catalogue: CaptionRepository,
        lease_s: float = DEFAULT_CLAIM_LEASE_S,
        wait_s: float = DEFAULT_CLAIM_WAIT_S,
    ) -> None:
        self._catalogue = catalogue
        self._lease_s = lease_s
        self._wait_s = wait_s
        self._inflight: dict[CaptionKey, Future[Description]] = {}
        self._inflight_lock = threading.Lock()
        self._leases = LeaseRenewals(catalogue, lease_s)

    def describe(
        self, key: CaptionKey, decode: Callable[[], DecodedImage], run: RunUnderClaim
    ) -> Description:
        """The key's record: stored already, made by another run meanwhile, or made by ``run``."""
        known = self._catalogue.find(key.sha256, key.model, key.prompt)
        if known is not None and known.captioned:  # a queued one is captioned here and now
            return Description(known, duplicate=True)

        with self._inflight_lock:
            running = self._inflight.get(key)
            if running is None:
                mine: Future[Description] = Future()
                self._inflight[key] = mine
        if running is not None:
            # Same bytes are being described in this process: wait for that run, which
            # speaks for us to the catalogue (no polling, no second claim).
            return replace(running.result(), duplicate=True)
        try:
            result = self._describe_claimed(key, decode, run)
        except BaseException as error:
            mine.set_exception(error)
            raise
        else:
            mine.set_result(result)
            return result
        finally:
            with self._inflight_lock:
                del self._inflight[key]

    def describe_many(
        self,
        wanted: Mapping[CaptionKey, Callable[[], DecodedImage]],
        run_batch: RunBatchUnderClaims,
        run: RunUnderClaim,
        batch: int,
    ) -> dict[CaptionKey, Outcome]:
        """Each key's outcome as ``describe`` gives it, with one lookup per model and prompt,
        one claim statement per ``batch`` keys and ``run_batch`` on the keys so claimed.

        Keys another thread here is describing wait for that run; keys another owner holds
        wait for its record afterwards (or are run alone with ``run`` once its claim lapses).
        """
        outcomes: dict[CaptionKey, Outcome] = {
            key: Description(record, duplicate=True) for key, record in self._known(wanted).items()
        }
        mine: dict[CaptionKey, Future[Description]] = {}
        theirs: dict[CaptionKey, Future[Description]] = {}
        with self._inflight_lock:
            for key in wanted:
                if key in outcomes:
                    continue
                running = self._inflight.get(key)
                if running is None:
                    mine[key] = self._inflight[key] = Future()
                else:
                    theirs[key] = running
        try:
            self._describe_mine(wanted, list(mine), run_batch, run, batch, outcomes)
        except BaseException as error:
            for key, future in mine.items():
                if key not in outcomes:
                    future.set_exception(error)
            raise
        finally:
            for key, future in mine.items():
                if future.done():
                    continue
                outcome = outcomes.get(key)
                if isinstance(outcome, Description):
                    future.set_result(outcome)
                elif outcome is not None:
                    future.set_exception(outcome)
            with self._inflight_lock:
                for key in mine:
                    del self._inflight[key]
        for key, running in theirs.items():
            try:
                outcomes[key] = replace(running.result(), duplicate=True)
            except Exception as error:
                outcomes[key] = error
        return outcomes

    def _known(self, keys: Iterable[CaptionKey]) -> dict[CaptionKey, ImageRecord]:
        """The captioned records of these keys: one query per model and prompt among them."""
        asked: dict[tuple[str, str], list[str]] = {}
        for key in keys:
            asked.setdefault((key.model, key.prompt), []).append(key.sha256)
        return {
            CaptionKey(record.sha256, model, prompt): record
            for (model, prompt), sha256s in asked.items()
            for record in self._catalogue.find_many(sha256s, model, prompt)
        }

    def _describe_mine(
        self,
        wanted: Mapping[CaptionKey, Callable[[], DecodedImage]],
        keys: Sequence[CaptionKey],
        run_batch: RunBatchUnderClaims,
        run: RunUnderClaim,
        batch: int,
        outcomes: dict[CaptionKey, Outcome],
    ) -> None:
        images: dict[CaptionKey, DecodedImage] = {}
        for key in keys:
            try:  # bytes that are no image are refused without touching the catalogue
                images[key] = wanted[key]()
            except Exception as error:
                outcomes[key] = error
        decoded = list(images)
        parts = [decoded[start : start + batch] for start in range(0, len(decoded), batch)]
        held: list[CaptionKey] = []
        # One image at a time means one: no caption then waits unkept while the model runs
        # the next (a process killed meanwhile would lose it, and it would be made again).
        in_flight = _BATCHES_IN_FLIGHT if batch > 1 else 1
        with ThreadPoolExecutor(in_flight, "captioner-model-batch") as batches:
            for done, waiting in batches.map(
                lambda part: self._run_batch(part, images, run_batch), parts
            ):
                outcomes.update(done)
                held.extend(waiting)
        # Last, so the other owners have had our whole run to finish theirs.
        for key in held:
            image = images[key]
            try:
                outcomes[key] = self._describe_claimed(key, functools.partial(_same, image), run)
            except Exception as error:
                outcomes[key] = error

    def _run_batch(
        self,
        keys: Sequence[CaptionKey],
        images: Mapping[CaptionKey, DecodedImage],
        run_batch: RunBatchUnderClaims,
    ) -> tuple[dict[CaptionKey, Outcome], list[CaptionKey]]:
        """Claim the keys in one statement and run the claimed ones; the others are held."""
        try:
            claims = self._catalogue.claim_many(keys, self._lease_s)
        except Exception as error:  # the catalogue is down: every image of the batch says so
            return dict.fromkeys(keys, error), []
        held = [key for key in keys if key not in claims]
        outcomes: dict[CaptionKey, Outcome] = {}
        given_back: list[Claim] = []
        try:
            # Runs that finished between our first lookup and our claims have stored them.
            for key, record in self._known(claims).items():
                outcomes[key] = Description(record, duplicate=True)
                given_back.append(claims[key])
            to_run = [claims[key] for key in claims if key not in outcomes]
            results = run_batch([(images[claim.key], claim) for claim in to_run]) if to_run else []
            for claim, result in zip(to_run, results, strict=True):
                outcomes[claim.key] = result
                if isinstance(result, Exception):
                    given_back.append(claim)
        except Exception as error:
            for key, claim in claims.items():
                if key not in outcomes:
                    outcomes[key] = error
                    given_back.append(claim)
        if given_back:
            self._release_quietly(given_back)
        return outcomes, held

    def lease_kept(self, *claims: Claim) -> contextlib.AbstractContextManager[None]:
        """Renew the claims' leases while the caller works under them (the model run)."""
        return self._leases.kept(claims)

    def _describe_claimed(
        self, key: CaptionKey, decode: Callable[[], DecodedImage], run: RunUnderClaim
    ) -> Description:
        """Run only under the key's claim, or answer with the claimant's record.

        The claim lives in the catalogue, so this holds across processes and replicas: one
        of them runs the model, the others wait for its record. A claimant that died leaves
        an expired lease, which the next round here takes over.
        """
        # Decoded first: bytes that are no image are refused without touching the catalogue.
        image = decode()
        deadline = time.monotonic() + self._wait_s
        while True:
            claim = self._catalogue.claim(key, self._lease_s)
            if claim is not None:
                return self._run_claimed(image, claim, run)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CaptionerBusy(
                    "Another replica is still describing these bytes; retry in a moment.",
                    retry_after_s=max(1, round(min(self._lease_s, 30))),
                )
            record = self._catalogue.await_record(key, remaining)
            if record is not None:
                return Description(record, duplicate=True)

    def _run_claimed(self, image: DecodedImage, claim: Claim, run: RunUnderClaim) -> Description:
        key = claim.key
        try:
            # A run that finished between our first lookup and our claim has stored it.
            stored = self._catalogue.find(key.sha256, key.model, key.prompt)
            if stored is not None and stored.captioned:
                self._catalogue.abandon(claim)
                return Description(stored, duplicate=True)
            return run(image, claim)
        except BaseException:
            self._abandon_quietly(claim)
            raise

    def _abandon_quietly(self, claim: Claim) -> None:
        """Give the claim back after a failure; when even that fails, its lease runs out."""
        with contextlib.suppress(CaptionerError):
            self._catalogue.abandon(claim)

    def _release_quietly(self, claims: Sequence[Claim]) -> None:
        """Give claims back after failures, in one transaction; else their leases run out."""
        with contextlib.suppress(CaptionerError):
            self._catalogue.release(claims)


class BytesLocks:
    """Thread locks by digest, so storing and deleting the same bytes never interleave.

    A delete that removed the file just after an upload found it present would leave that
    upload's row without its file. Striped, so different images never wait for each other.
    They order the requests of ONE process; across replicas the service re-checks instead: an
    upload that a delete could have met checks the file after its row commits
    (keep_file_after_commit), a delete counts the rows again after removing the file and puts
    the bytes back when a record appeared (CaptionService._put_back_if_used).
    """

    def __init__(self, stripes: int = _BYTES_LOCK_STRIPES) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    def of(self, sha256: str) -> threading.Lock:
        return self._locks[zlib.crc32(sha256.encode()) % len(self._locks)]

    @contextlib.contextmanager
    def of_all(self, sha256s: Iterable[str]) -> Iterator[None]:
        """Hold the locks of all these digests (a batch's), taken in one order so that two
        batches never wait for each other in a circle."""
        stripes = sorted({zlib.crc32(sha256.encode()) % len(self._locks) for sha256 in sha256s})
        with contextlib.ExitStack() as held:
            for stripe in stripes:
                held.enter_context(self._locks[stripe])
            yield


def _same(image: DecodedImage) -> DecodedImage:
    return image


def file_may_be_gone(before: DeletesSeen, after: DeletesSeen) -> bool:
    """Whether a delete of these bytes on another replica could have removed the file between
    an upload's ``save`` and its record's commit, from the marks the upload read ``before``
    (any time before ``save``) and ``after`` (after its record committed, or in the record's
    transaction where the catalogue makes a ``begin_delete`` of the same bytes that it did not
    see wait for that commit: BytesDeletes, complete_seeing_deletes).

    A delete marks itself (begin_delete, committed) before it counts the records of the path,
    and unmarks (end_delete) once it is done with the file. An upload that sees no delete in
    flight ``before`` and the same ticket ``after`` needs no look at its file, whatever the
    interleaving. Take a delete D that removed the file after the upload's ``save`` found it
    (or wrote it): D's mark committed before its removal. If the mark came before ``before``
    was read, D was still in flight then (it unmarks only after the removal, which came after
    ``save``, which came after ``before``): ``running`` > 0. If it came between the two reads,
    it left a ticket no one left before: the tickets differ. If ``after`` did not see it, the
    mark committed after the upload's record did, so D's count of the path's records, made
    after its mark, saw the record and D removed nothing. A crashed or failed delete
    stays in flight: uploads of those bytes re-check (correct, a call slower) until a later
    delete counts it dead (DELETE_STALE_S), under a fresh ticket, long after it ended.

    Marks of finished deletes are dropped after DELETE_MARKS_KEPT_S, so a mark could come and
    go between two reads further apart than that, leaving "no mark" twice: an upload that took
    longer than half of it re-checks.
    """
    if before.running != 0 or after.running < 0:  # a delete in flight, or nothing was read
        return True
    return after.ticket != before.ticket or after.at - before.at > DELETE_MARKS_KEPT_S / 2


def keep_file_after_commit(
    store: ImageStore,
    record: ImageRecord,
    path: str,
    digest: ImageDigest,
    reopen: Callable[[], BinaryIO],
    extension: str,
    deletes: tuple[DeletesSeen, Callable[[], DeletesSeen]],
) -> None:
    """Save the bytes again when a replica's delete removed the file after ``save`` found it
    present and before this record committed; the record is visible now, so a later delete
    counts it and keeps the file. ``deletes``: the marks read before ``save``, and how to
    have them as of the commit; the store is asked only when they say a delete could have
    run meanwhile."""
    before, after = deletes
    if record.path == path and file_may_be_gone(before, after()) and not store.exists(path):
        store.save(digest, reopen(), extension)


class LeaseRenewals:
    """Renews the leases of the claims held in this process while their work goes on (a
    model run, a queue worker's batch), all from one thread: none is started and joined per
    caption, which under load cost an upload more than its renewals."""

    def __init__(self, claims: CaptionClaims, lease_s: float) -> None:
        self._claims = claims
        self._lease_s = lease_s
        self._lock = threading.Lock()
        self._held: dict[int, Claim] = {}
        self._tickets = itertools.count()
        self._renewing = False

    @contextlib.contextmanager
    def kept(self, claims: Iterable[Claim]) -> Iterator[None]:
        """Renew these claims until the block ends."""
        with self._lock:
            tickets = []
            for claim in claims:
                tickets.append(ticket := next(self._tickets))
                self._held[ticket] = claim
            if tickets and not self._renewing:
                threading.Thread(
                    target=self._renew_while_held, name="captioner-claim-leases", daemon=True
                ).start()
                self._renewing = True
        try:
            yield
        finally:
            with self._lock:
                for ticket in tickets:
                    self._held.pop(ticket, None)

    def _renew_while_held(self) -> None:
        # A third of the lease: two renewals may fail (database restarting) before it lapses.
        # Each claim is renewed within that of being kept, and at least as often after.
        while True:
            time.sleep(self._lease_s / 3)
            with self._lock:
                if not self._held:
                    self._renewing = False  # the next kept() starts a thread again
                    return
                held = list(self._held.items())
            for ticket, claim in held:
                with self._lock:
                    if ticket not in self._held:
                        continue  # its work ended meanwhile: the claim is being released
                try:
                    if not self._claims.renew(claim, self._lease_s):
                        # Taken over; our record, if it comes second, is answered as such.
                        with self._lock:
                            self._held.pop(ticket, None)
                except CaptionerError:
                    continue  # catalogue unreachable for a moment: try again at the next tick
