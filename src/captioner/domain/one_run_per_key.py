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
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
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

    def lease_kept(self, claim: Claim) -> contextlib.AbstractContextManager[object]:
        """Renew the claim's lease while the caller works under it (the model run)."""
        return leases_kept(self._catalogue, [claim], self._lease_s)

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


def leases_kept(
    catalogue: CaptionClaims, claims: Sequence[Claim], lease_s: float
) -> contextlib.AbstractContextManager[object]:
    """Renew these claims' leases from a background thread while the caller works under them
    (a model run, or a queue worker's batch)."""
    return _LeaseKeeper(catalogue, claims, lease_s)


class _LeaseKeeper:
    """Renews claims' leases from a background thread while the model works on their keys."""

    def __init__(self, claims: CaptionClaims, held: Sequence[Claim], lease_s: float) -> None:
        self._claims = claims
        self._held = list(held)
        self._lease_s = lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="captioner-claim-lease", daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # A third of the lease: two renewals may fail (database restarting) before it lapses.
        while self._held and not self._stop.wait(self._lease_s / 3):
            for claim in list(self._held):
                try:
                    if not self._claims.renew(claim, self._lease_s):
                        # Taken over; our record, if it comes second, is answered as such.
                        self._held.remove(claim)
                except CaptionerError:
                    continue  # catalogue unreachable for a moment: try again at the next tick
