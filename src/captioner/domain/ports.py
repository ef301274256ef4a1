"""The ports: what the service needs from the outside world, as small typed interfaces."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from captioner.domain.access import ApiKey
from captioner.domain.model import (
    Caption,
    CaptionChoice,
    CaptionDone,
    CaptionKey,
    CatalogueSnapshot,
    Claim,
    DecodedImage,
    DeletesSeen,
    ImageDigest,
    ImageRecord,
    ListedImage,
    ModelCaptions,
    NewImageRecord,
    Provenance,
    QueuedCaption,
    QueueStatus,
    Readiness,
    Thumbnail,
)


class Captioner(Protocol):
    """Describes one decoded image in a sentence."""

    @property
    def model_name(self) -> str:
        """The model id or directory; part of the deduplication key."""
        ...

    @property
    def provenance(self) -> Provenance:
        """The loaded weights' revision and the generation settings every caption uses."""
        ...

    def readiness(self) -> Readiness: ...

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        """Block until the model is loaded (or failed to load), at most ``timeout`` seconds;
        a failure that needs new settings and a restart is ``permanent``."""
        ...

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        """The description and its model time; raise CaptionerUnavailable, CaptionerBusy or
        CaptioningFailed."""
        ...


class DescribeObserver(Protocol):
    """Hears what describing did, whichever way in (HTTP, CLI, library); cheap, never raises."""

    def caption_generated(self) -> None:
        """The model described one image."""
        ...

    def duplicate_upload(self) -> None:
        """An upload was answered from storage (or from a run already in flight)."""
        ...


class ImageDecoder(Protocol):
    """Decides from the bytes alone whether an upload is an allowed image, and decodes it."""

    def decode(self, content: BinaryIO) -> DecodedImage:
        """Raise InvalidImage, UnsupportedImageType or ImageTooLarge when it is not acceptable.

        ``content`` arrives at position 0 and may be left anywhere.
        """
        ...


class ImageStore(Protocol):
    """Keeps image bytes, addressed by their digest; paths are relative to the data dir."""

    def save(
        self,
        digest: ImageDigest,
        content: BinaryIO,
        extension: str,
        local_path: str | None = None,
    ) -> str:
        """Store atomically (no-op when already there); return the relative path.

        ``content`` arrives at position 0 and may be left anywhere. ``local_path``, when
        given, is a file holding the same bytes that a store on the same disk may link into
        place instead of copying ``content``; it stays the caller's (never moved or removed).
        """
        ...

    def open(self, path: str) -> BinaryIO: ...

    def exists(self, path: str) -> bool: ...

    def delete(self, path: str) -> None: ...

    def paths(self) -> Iterator[str]:
        """Every stored image path (for consistency checks)."""
        ...

    def digest_of(self, path: str) -> ImageDigest: ...

    def age_s(self, path: str) -> float:
        """Seconds since the file was written (an upload in flight has a young file)."""
        ...

    def readiness(self) -> Readiness: ...


class ThumbnailStore(Protocol):
    """Makes and keeps one small preview per distinct image bytes, addressed by their digest."""

    def open_or_make(self, digest: ImageDigest, open_original: Callable[[], BinaryIO]) -> Thumbnail:
        """The kept thumbnail, open; or make it from the original's bytes, keep it, return it.

        ``open_original`` is called only when a thumbnail has to be made; the stream it
        returns is at position 0 and is closed by the store. Raise InvalidImage when the
        original cannot be decoded.
        """
        ...

    def delete(self, digest: ImageDigest) -> None:
        """Forget the thumbnail (no-op when there is none)."""
        ...

    def digests(self) -> Iterator[ImageDigest]:
        """The digest of every kept thumbnail (for consistency checks)."""
        ...


class FileLinks(Protocol):
    """Hands out time-limited URLs where clients fetch stored image bytes straight from storage."""

    def link(self, path: str, content_type: str, download_name: str) -> str: ...


class CaptionClaims(Protocol):
    """Who runs the model for a key, among every process and replica sharing the catalogue.

    One owner at a time holds a key's claim; the others await its record. Claims are not
    images: they are never listed, counted or checked.
    """

    def claim(self, key: CaptionKey, lease_s: float) -> Claim | None:
        """Claim the key for a model run; None while another owner's unexpired claim holds it.

        An expired claim is taken over. A record that already exists does not stop a claim:
        the claimant looks the record up again before running the model.
        """
        ...

    def renew(self, claim: Claim, lease_s: float) -> bool:
        """Extend the lease from now; False when the claim was lost (expired and taken over)."""
        ...

    def await_record(self, key: CaptionKey, timeout_s: float) -> ImageRecord | None:
        """Wait at most ``timeout_s`` for the key's record; None when it did not appear.

        Returns early with None when no live claim holds the key any more (abandoned, or its
        lease expired), so the caller can claim it itself.
        """
        ...

    def complete(self, claim: Claim, new: NewImageRecord) -> tuple[ImageRecord, bool]:
        """Store the record and release the claim in one step, waking those who await it.

        When the key's record exists already, return it and False (as ``add`` does).
        """
        ...

    def complete_seeing_deletes(
        self, claim: Claim, new: NewImageRecord
    ) -> tuple[ImageRecord, bool, DeletesSeen]:
        """``complete``, and the marks of deletes of the bytes as of its commit (BytesDeletes):
        read in its transaction, which a ``begin_delete`` of the same bytes either commits
        before (the read sees it) or waits for. Unknown marks when no record was created.
        """
        ...

    def abandon(self, claim: Claim) -> None:
        """Release the claim without a record (the run failed); one waiter then takes over."""
        ...

    def claim_many(self, keys: Sequence[CaptionKey], lease_s: float) -> Mapping[CaptionKey, Claim]:
        """Claim every key another owner's unexpired claim does not hold, in one statement
        (one owner for them all); a key left out of the answer is held by another owner.
        Each claim carries the marks of deletes of its bytes that the statement read."""
        ...

    def complete_many(
        self, done: Sequence[tuple[Claim, NewImageRecord]]
    ) -> Sequence[tuple[ImageRecord, bool, DeletesSeen]]:
        """``complete_seeing_deletes`` for each pair (distinct keys), in one transaction; the
        outcomes in order: the record kept, False where the key's record existed already, and
        the marks of deletes of its bytes as of the commit."""
        ...

    def release(self, claims: Sequence[Claim]) -> None:
        """Give the claims back without a record and without counting a queue attempt, in
        one transaction (runs that failed, or a model that was unavailable)."""
        ...


class BytesDeletes(Protocol):
    """Deletes of image bytes in flight, marked where every replica sees them, so an upload of
    the same bytes can tell whether a delete could have taken its file (see
    ``one_run_per_key.file_may_be_gone``). Marks are not images: never listed, copied or counted.

    ``claim`` reads the marks of the key's bytes in its own statement (``Claim.deletes``).
    """

    def deletes_of(self, sha256: str) -> DeletesSeen:
        """The marks of these bytes now: deletes in flight and the latest one's ticket."""
        ...

    def find_seeing_deletes(
        self, sha256: str, model: str, prompt: str
    ) -> tuple[ImageRecord | None, DeletesSeen]:
        """``find``, and the marks of deletes of these bytes, in one statement."""
        ...

    def add_seeing_deletes(self, new: NewImageRecord) -> tuple[ImageRecord, bool, DeletesSeen]:
        """``add``, and the marks as of its commit (as ``complete_seeing_deletes`` has them)."""
        ...

    def begin_delete(self, sha256: str) -> None:
        """Count one more delete of these bytes in flight, under a fresh ticket; committed on
        return."""
        ...

    def end_delete(self, sha256: str, forget_after_s: float, stale_after_s: float) -> None:
        """Count one delete of these bytes less in flight (the ticket stays). Meanwhile marks
        with nothing in flight, unchanged for ``forget_after_s``, are dropped, and marks with
        deletes in flight unchanged for ``stale_after_s`` (deletes that died: a replica killed
        mid-delete, a store fault) count none in flight any more, under a fresh ticket."""
        ...


class CaptionRepository(CaptionClaims, BytesDeletes, Protocol):
    """The catalogue of described images; unique per (sha256, model, prompt).

    It also holds the claims on captions in progress, so the catalogue every replica shares
    decides who runs the model.
    """

    def find(self, sha256: str, model: str, prompt: str) -> ImageRecord | None: ...

    def find_many(self, sha256s: Sequence[str], model: str, prompt: str) -> Sequence[ImageRecord]:
        """The records of those digests that ``model`` described with ``prompt``: one query."""
        ...

    def captions_of(self, sha256: str) -> Sequence[ImageRecord]:
        """Every record of these bytes (one per model and prompt), oldest first."""
        ...

    def without_caption(
        self, model: str, prompt: str, after: int = 0, limit: int = 1000
    ) -> Sequence[ImageRecord]:
        """One record per distinct image (its first) that ``model`` has not described with
        ``prompt``, ids above ``after``, oldest first: pages of what a re-caption has left."""
        ...

    def count_without_caption(self, model: str, prompt: str) -> int: ...

    def models_with_revision(self, revision: str) -> Sequence[str]:
        """Every model name that records made by weights of this revision carry."""
        ...

    def adopt_records(self, aliases: Sequence[str], model: str, revision: str) -> int:
        """Rename to ``model`` the records of ``aliases`` made with ``revision``, in one
        transaction; return how many.

        Where the same bytes and prompt have a record under ``model`` already, or under two
        aliases, one record stays (``model``'s, else the oldest) and the others are deleted,
        so the catalogue stays unique per (sha256, model, prompt). Records of an alias made
        by other weights keep their name.
        """
        ...

    def add(self, new: NewImageRecord) -> tuple[ImageRecord, bool]:
        """Insert; when the key already exists return the existing record and False."""
        ...

    def replace(self, new: NewImageRecord) -> ImageRecord | None:
        """Keep ``new`` as the record of its key, in place of the one there (description,
        provenance and time replaced, id kept), else as a new record; None when no record
        of these bytes remains (the image was deleted meanwhile). One transaction."""
        ...

    def delete_captions(self, sha256: str, model: str) -> Sequence[ImageRecord]:
        """Delete ``model``'s records of these bytes (every prompt) unless they are all the
        image has; the deleted records, oldest first."""
        ...

    def get(self, record_id: int) -> ImageRecord | None: ...

    def list(
        self,
        limit: int,
        before: int | None = None,
        query: str | None = None,
        shown: CaptionChoice | None = None,
    ) -> Sequence[ListedImage]:
        """One entry per image (distinct sha256) with the caption ``shown`` picks (see
        ``caption_rank``; without it, the newest), newest image first (by ``image_id``),
        image ids below ``before``; ``query`` keeps the images whose shown caption has
        every word, best match first. One query, whatever the page size."""
        ...

    def models(self) -> Sequence[ModelCaptions]:
        """Every model that described an image, by name, with how many images it described."""
        ...

    def delete(self, record_id: int) -> ImageRecord | None: ...

    def delete_image(self, sha256: str) -> Sequence[ImageRecord]:
        """Delete every record of these bytes (all models and prompts) in one step; the
        deleted records, oldest first (none when there were none)."""
        ...

    def count_with_path(self, path: str) -> int: ...

    def all_records(self) -> Iterator[ImageRecord]:
        """Every record, oldest first, read in pages: memory stays flat however many there are."""
        ...

    def readiness(self) -> Readiness: ...

    def close(self) -> None:
        """Release the catalogue's connections (at shutdown)."""
        ...


class CaptionQueue(CaptionClaims, Protocol):
    """Pending captions, kept durably in the catalogue: workers anywhere take them in batches.

    A pending record is an ImageRecord with ``status`` pending (empty description). Taking one
    claims its key with a lease (the CaptionClaims of the same catalogue), so a worker that
    dies loses its batch when the leases run out and another takes it.
    """

    def enqueue(self, new: NewImageRecord, urgent: bool = False) -> tuple[ImageRecord, bool]:
        """Keep a pending record for ``new``'s key; when the key has a record already (any
        status) return it and False. ``urgent``: a caller waits for it (goes first)."""
        ...

    def enqueue_seeing_deletes(
        self, new: NewImageRecord, urgent: bool = False
    ) -> tuple[ImageRecord, bool, DeletesSeen]:
        """``enqueue``, and the marks of deletes of the bytes as of its commit (BytesDeletes;
        as ``complete_seeing_deletes`` has them)."""
        ...

    def take(self, model: str, lease_s: float, limit: int) -> Sequence[QueuedCaption]:
        """Claim up to ``limit`` due pending records of ``model``, urgent first, then oldest;
        those whose key another owner holds are left."""
        ...

    def finish(self, done: Sequence[CaptionDone]) -> Sequence[ImageRecord]:
        """Write the captions and release their claims in one transaction; the records kept
        (one deleted or captioned meanwhile is left out)."""
        ...

    def fail(
        self, item: QueuedCaption, reason: str, max_attempts: int, retry_in_s: float
    ) -> ImageRecord | None:
        """Count a failed model run: pending again after ``retry_in_s``, or failed with the
        reason once ``max_attempts`` runs failed; releases the claim."""
        ...

    def await_settled(self, key: CaptionKey, timeout_s: float) -> ImageRecord | None:
        """Wait at most ``timeout_s`` until the key's record is no longer pending; the record
        then (still pending at the timeout), None when it is gone."""
        ...

    def queue_status(self, alive_s: float, count_captioned: bool = True) -> QueueStatus:
        """Counts by status, the oldest pending age, and workers seen within ``alive_s``;
        without ``count_captioned`` the (costly) count of captioned records is left out."""
        ...

    def heartbeat(self, name: str, model: str) -> None:
        """Say the worker ``name`` is alive now."""
        ...

    def forget_worker(self, name: str) -> None: ...

    def jobs(self, status: str | None = None, limit: int = 1000) -> Sequence[ImageRecord]:
        """Pending and failed records (or only ``status``), oldest first."""
        ...

    def retry(self, record_id: int | None = None) -> int:
        """Queue a failed record again (every failed one when ``record_id`` is None), with
        its attempts reset; how many."""
        ...


class KeyRing(Protocol):
    """The API keys (only their SHA-256, never the keys) and the sign-in sessions made from them.

    Shared by every replica, so a revoked key stops working everywhere at once.
    """

    def add_key(self, key: ApiKey, key_sha256: str) -> None:
        """Keep a new key; raise KeyNameTaken when its name is in use."""
        ...

    def key_with_hash(self, key_sha256: str) -> tuple[ApiKey, str] | None:
        """The key whose SHA-256 (hex) is this, with the stored hash; None when unknown."""
        ...

    def all_keys(self) -> Sequence[ApiKey]:
        """Every key, oldest first."""
        ...

    def has_keys(self) -> bool: ...

    def remove_key(self, name: str) -> bool:
        """Forget the key and its sessions; False when there was no such key."""
        ...

    def mark_used(self, name: str, when: datetime) -> None: ...

    def add_session(self, token_sha256: str, key_name: str, expires_at: datetime) -> None:
        """Keep a sign-in session (by its token's SHA-256); drop sessions already expired."""
        ...

    def key_of_session(self, token_sha256: str, now: datetime) -> tuple[ApiKey, str] | None:
        """The key behind an unexpired session, with the session's stored token hash."""
        ...

    def remove_session(self, token_sha256: str) -> None: ...


class CatalogueBackups(Protocol):
    """Point-in-time copies of the whole catalogue (records, caption history, edits, keys,
    sessions, the queue) in one file, and putting one back."""

    @property
    def engine(self) -> str:
        """``sqlite`` or ``postgres``: a copy goes back into a catalogue of its engine."""
        ...

    @property
    def file_name(self) -> str:
        """The copy's file name in a backup (``catalogue.sqlite3``, ``catalogue.pgdump``)."""
        ...

    def snapshot(self, target: Path) -> CatalogueSnapshot:
        """Write a consistent copy of the catalogue to ``target`` while it serves (writers
        go on meanwhile); what the copy holds, read from the copy's own point in time."""
        ...

    def problem_with(self, copy: Path) -> str | None:
        """Why ``copy`` cannot be restored here (unreadable, torn, from a newer schema), or
        None when it can."""
        ...

    def holds_a_library(self) -> bool:
        """Whether the catalogue in effect holds any record or key already."""
        ...

    def restore(self, copy: Path) -> None:
        """Make the catalogue in effect hold exactly what ``copy`` holds, in one step."""
        ...


# A column's value as every engine can hold it: instants as ISO 8601 text in UTC with
# microseconds, JSON as text with sorted keys.
Value = str | int | float | None
Row = tuple[Value, ...]


@dataclass(frozen=True)
class Table:
    """One table of the catalogue: its columns (its key first) and the tables it refers to."""

    name: str
    columns: tuple[str, ...]
    parents: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.columns[0]


@dataclass(frozen=True)
class TableChanges:
    """What one write does to a table, in one transaction: delete, update, then insert."""

    insert: list[Row] = field(default_factory=list)
    update: list[Row] = field(default_factory=list)
    delete: list[Value] = field(default_factory=list)


class CatalogueTables(Protocol):
    """The catalogue as tables of plain rows, to copy a library from one engine to another."""

    def tables(self) -> Sequence[Table]:
        """The tables that hold the library (not its bookkeeping nor runs in progress)."""
        ...

    def rows(
        self, table: Table, after: Value, limit: int | None, until: Value = None
    ) -> Sequence[Row]:
        """Rows with a key above ``after`` (None: from the first) and at most ``until``
        (None: to the last), in key order (by code point for text), ``limit`` at most."""
        ...

    def write(self, table: Table, changes: TableChanges) -> None:
        """Apply ``changes`` in one transaction; keys the engine counts go on past every
        key written."""
        ...


class RateLimiter(Protocol):
    """Counts hits per identity (a client address, a key's name) against a rate."""

    def blocked_for(self, who: str) -> int | None:
        """Seconds until ``who`` may go on; None when within the rate."""
        ...

    def hit(self, who: str) -> int | None:
        """Count one; seconds to wait when that was one too many, else None."""
        ...


class RecentHits(Protocol):
    """Hits per identity in a moving window, kept where every replica counts them (the
    catalogue): what a shared Throttle counts on. ``counter`` names what is counted."""

    def wait_s(self, counter: str, who: str, limit: int, window_s: float) -> float | None:
        """Seconds until fewer than ``limit`` of ``who``'s hits lie in the last ``window_s``;
        None when that is so already."""
        ...

    def add_hit(self, counter: str, who: str, limit: int, window_s: float) -> float | None:
        """Count one hit for ``who``, unless ``limit`` lie in the window already: then
        nothing is counted and the answer is the wait, as ``wait_s`` gives it."""
        ...
