"""CaptionService: describe an upload once per distinct bytes, and keep, list and delete images."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import PurePath
from typing import BinaryIO

from captioner.domain.downloads import download_name
from captioner.domain.errors import (
    CaptionerBusy,
    CaptionerError,
    CaptionerUnavailable,
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    StorageFull,
    StorageUnavailable,
    StoredFileMissing,
)
from captioner.domain.model import (
    CaptionChoice,
    CaptionKey,
    Claim,
    DecodedImage,
    Description,
    ImageDigest,
    ImagePage,
    ImageRecord,
    ImageUpload,
    KnownImages,
    ModelCaptions,
    NewImageRecord,
    Readiness,
    Thumbnail,
)
from captioner.domain.ports import (
    Captioner,
    CaptionRepository,
    DescribeObserver,
    FileLinks,
    ImageDecoder,
    ImageStore,
    ThumbnailStore,
)
from captioner.domain.rules import (
    DEFAULT_LIST_LIMIT,
    MAX_KNOWN_DIGESTS,
    MAX_LIST_LIMIT,
    clean_original_name,
    clean_prompt,
)
from captioner.domain.storage_check import CheckReport, StorageProblem

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 300.0
_BYTES_LOCKS = 64
DEFAULT_CLAIM_LEASE_S = 30.0
DEFAULT_CLAIM_WAIT_S = 120.0

_Key = tuple[str, str, str]


class CaptionService:
    """The one place the rules live; HTTP, CLI and library callers all go through it."""

    def __init__(
        self,
        captioner: Captioner,
        decoder: ImageDecoder,
        store: ImageStore,
        repository: CaptionRepository,
        max_upload_bytes: int = 20 * 1024 * 1024,
        default_prompt: str = "",
        thumbnails: ThumbnailStore | None = None,
        observer: DescribeObserver | None = None,
        claim_lease_s: float = DEFAULT_CLAIM_LEASE_S,
        claim_wait_s: float = DEFAULT_CLAIM_WAIT_S,
        file_links: FileLinks | None = None,
    ) -> None:
        self._captioner = captioner
        self._decoder = decoder
        self._store = store
        self._repository = repository
        self._thumbnails = thumbnails
        self._observer = observer or _NoObserver()
        self._file_links = file_links
        self._max_upload_bytes = max_upload_bytes
        self._default_prompt = clean_prompt(default_prompt)
        self._claim_lease_s = claim_lease_s
        self._claim_wait_s = claim_wait_s
        self._inflight: dict[_Key, Future[Description]] = {}
        self._inflight_lock = threading.Lock()
        # Storing and deleting the same bytes must not interleave: a delete that removes the
        # file just after an upload found it present would leave that upload's row without
        # its file. Striped by digest, so different images never wait for each other.
        # These are thread locks: they order the requests of ONE process. Across processes
        # (or machines) sharing a catalogue and store, claims in the catalogue make one model
        # run per key, but a delete racing a new record of the same bytes on another replica
        # is not ordered: `check` reports the record whose file went as missing_file.
        self._bytes_locks = [threading.Lock() for _ in range(_BYTES_LOCKS)]
        self._spellings_adopted = False
        self._adopt_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._captioner.model_name

    def adopt_earlier_spellings(self) -> int:
        """Move records stored under other spellings of the model's directory to its name.

        A local model is named by its absolute path; records stored before under
        ``models/x``, ``./models/x/`` or the same directory seen from elsewhere carry that
        spelling instead. Those made by the same weights (equal ``model_revision``, known once
        the model has loaded) and naming a directory of the same name are the same model's:
        they are renamed, so nothing is captioned twice. Runs once, as soon as the revision is
        known (every caption and lookup path calls it); returns the records adopted.
        """
        if self._spellings_adopted:
            return 0
        name = self._captioner.model_name
        if not os.path.isabs(name):  # a hub id or a served model: one spelling only
            self._spellings_adopted = True
            return 0
        revision = self._captioner.provenance.model_revision
        if revision is None:
            return 0  # not loaded yet: the next call looks again
        with self._adopt_lock:
            if self._spellings_adopted:
                return 0
            try:
                aliases = [
                    model
                    for model in self._repository.models_with_revision(revision)
                    if _spells_same_directory(model, name)
                ]
                adopted = self._repository.adopt_records(aliases, name, revision) if aliases else 0
            except CaptionerError as error:  # the catalogue is down: try again on next use
                log.warning("records under other spellings of %s not adopted yet: %s", name, error)
                return 0
            self._spellings_adopted = True
        if adopted:
            log.info(
                "%d record(s) stored under %s now carry the model's name %s",
                adopted,
                ", ".join(aliases),
                name,
            )
        return adopted

    def describe(self, upload: ImageUpload) -> Description:
        """Return the stored description of these bytes, or run the model once and keep both."""
        result = self._describe(upload)
        if result.duplicate:
            self._observer.duplicate_upload()
        return result

    def _describe(self, upload: ImageUpload) -> Description:
        prompt = clean_prompt(upload.prompt or self._default_prompt)
        size = _stream_size(upload.content)
        if size == 0:
            raise InvalidImage(
                "The file is empty: upload an image (JPEG, PNG, WebP, ...).",
                problem="The file is empty.",
            )
        if size > self._max_upload_bytes:
            raise ImageTooLarge(
                f"The file is {size} bytes; the limit is {self._max_upload_bytes} bytes. "
                "Upload a smaller image."
            )
        digest = upload.digest or ImageDigest.of_stream(_from_start(upload.content))
        self.adopt_earlier_spellings()
        key = (digest.hex, self._captioner.model_name, prompt)

        known = self._repository.find(*key)
        if known is not None:
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
            result = self._describe_claimed(upload, digest, prompt)
        except BaseException as error:
            mine.set_exception(error)
            raise
        else:
            mine.set_result(result)
            return result
        finally:
            with self._inflight_lock:
                del self._inflight[key]

    def _describe_claimed(
        self, upload: ImageUpload, digest: ImageDigest, prompt: str
    ) -> Description:
        """Run the model only under the key's claim, or answer with the claimant's record.

        The claim lives in the catalogue, so this holds across processes and replicas: one
        of them runs the model, the others wait for its record. A claimant that died leaves
        an expired lease, which the next round here takes over.
        """
        # Decoded first: bytes that are no image are refused without touching the catalogue.
        image = self._decoder.decode(_from_start(upload.content))
        key = CaptionKey(digest.hex, self._captioner.model_name, prompt)
        deadline = time.monotonic() + self._claim_wait_s
        while True:
            claim = self._repository.claim(key, self._claim_lease_s)
            if claim is not None:
                return self._describe_new(upload, digest, image, claim)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CaptionerBusy(
                    "Another replica is still describing these bytes; retry in a moment.",
                    retry_after_s=max(1, round(min(self._claim_lease_s, 30))),
                )
            record = self._repository.await_record(key, remaining)
            if record is not None:
                return Description(record, duplicate=True)

    def _describe_new(
        self, upload: ImageUpload, digest: ImageDigest, image: DecodedImage, claim: Claim
    ) -> Description:
        key = claim.key
        try:
            # A run that finished between our first lookup and our claim has stored it.
            stored = self._repository.find(key.sha256, key.model, key.prompt)
            if stored is not None:
                self._repository.abandon(claim)
                return Description(stored, duplicate=True)
            # Caption before storing: a model failure leaves nothing behind. The lease is
            # renewed meanwhile; no transaction or lock is open while the model works.
            with _LeaseKeeper(self._repository, claim, self._claim_lease_s):
                caption = self._captioner.describe(image, key.prompt)
            self._observer.caption_generated()
            # File first, then row, so a crash in between leaves at most an orphan file that
            # `check` removes; the row's commit releases the claim.
            with self._lock_for(digest.hex):
                path = self._store.save(
                    digest, _from_start(upload.content), image.extension, upload.local_path
                )
                record, created = self._repository.complete(
                    claim,
                    NewImageRecord(
                        sha256=digest.hex,
                        path=path,
                        description=caption.text,
                        model=key.model,
                        prompt=key.prompt,
                        width=image.width,
                        height=image.height,
                        content_type=image.content_type,
                        original_name=clean_original_name(upload.original_name),
                        provenance=self._captioner.provenance.with_setting("prompt", key.prompt),
                        duration_ms=round(caption.duration_ms, 1),
                    ),
                )
        except BaseException:
            self._abandon_quietly(claim)
            raise
        return Description(record, duplicate=not created)

    def _abandon_quietly(self, claim: Claim) -> None:
        """Give the claim back after a failure; when even that fails, its lease runs out."""
        with contextlib.suppress(CaptionerError):
            self._repository.abandon(claim)

    def known(self, sha256s: Sequence[str]) -> KnownImages:
        """Which of these digests the current model has described with the default prompt.

        For clients that hash locally and upload only what is new; one repository query.
        """
        if len(sha256s) > MAX_KNOWN_DIGESTS:
            raise InvalidRequest(
                f"Ask about at most {MAX_KNOWN_DIGESTS} digests at once, got {len(sha256s)}."
            )
        for sha256 in sha256s:
            if not isinstance(sha256, str) or not _is_digest(sha256):
                raise InvalidRequest(
                    f"Not a SHA-256 digest (64 lowercase hex digits): {str(sha256)[:80]!r}."
                )
        asked = list(dict.fromkeys(sha256s))
        self.adopt_earlier_spellings()
        found = {
            record.sha256: record
            for record in self._repository.find_many(
                asked, self._captioner.model_name, self._default_prompt
            )
        }
        return KnownImages(found, tuple(sha for sha in asked if sha not in found))

    def captions(self, record_id: int) -> list[ImageRecord]:
        """Every caption of the image behind this record (all models and prompts), oldest first."""
        return list(self._repository.captions_of(self.get(record_id).sha256))

    def waiting_for_caption(
        self, prompt: str = "", limit: int | None = None
    ) -> Iterator[ImageRecord]:
        """One record per stored image that the current model has not described with
        ``prompt`` (default prompt when empty), oldest first, read in pages."""
        prompt = clean_prompt(prompt or self._default_prompt)
        self.adopt_earlier_spellings()
        after, given = 0, 0
        while limit is None or given < limit:
            page = self._repository.without_caption(
                self._captioner.model_name, prompt, after=after, limit=1000
            )
            if not page:
                return
            for record in page:
                if limit is not None and given >= limit:
                    return
                given += 1
                yield record
            after = page[-1].id

    def count_waiting_for_caption(self, prompt: str = "") -> int:
        prompt = clean_prompt(prompt or self._default_prompt)
        self.adopt_earlier_spellings()
        return self._repository.count_without_caption(self._captioner.model_name, prompt)

    def recaption(self, record: ImageRecord, prompt: str = "") -> Description:
        """Describe a stored image with the current model and ``prompt``; its other captions stay.

        Goes the way of every upload (deduplication, batching), so several workers re-captioning
        the same library run the model once per image.
        """
        with self._open_stored(record) as content:
            return self.describe(
                ImageUpload(
                    content=content,
                    original_name=record.original_name,
                    prompt=prompt,
                    digest=ImageDigest(record.sha256),
                )
            )

    def export(self, model: str | None = None, prompt: str | None = None) -> Iterator[ImageRecord]:
        """Every record, oldest first, streamed page by page; only ``model``'s / ``prompt``'s
        when given."""
        if prompt is not None:
            prompt = clean_prompt(prompt)  # stored prompts are cleaned: compare like with like
        for record in self._repository.all_records():
            if (model is None or record.model == model) and (
                prompt is None or record.prompt == prompt
            ):
                yield record

    def _lock_for(self, sha256: str) -> threading.Lock:
        return self._bytes_locks[zlib.crc32(sha256.encode()) % _BYTES_LOCKS]

    def list(
        self,
        limit: int = DEFAULT_LIST_LIMIT,
        before: int | None = None,
        query: str | None = None,
        model: str | None = None,
    ) -> ImagePage:
        """One entry per image, newest image first (by its first upload), or best match first
        when ``query`` has words to search for.

        Each image is shown with its current caption: the configured model's caption with the
        default prompt, else its newest. With ``model``, only the images that model described,
        each with that model's caption (default prompt first, else its newest). A search
        matches the caption shown, not the image's other captions.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}.")
        if before is not None and before < 1:
            raise InvalidRequest(f"before must be a positive image id, got {before}.")
        words = (query or "").strip() or None
        wanted = (model or "").strip() or None
        shown = CaptionChoice(
            model=wanted or self._captioner.model_name,
            prompt=self._default_prompt,
            only_model=wanted is not None,
        )
        # One extra row tells whether there is a next page without a COUNT(*).
        rows = list(self._repository.list(limit + 1, before, words, shown))
        page = tuple(rows[:limit])
        has_more = len(rows) > limit and words is None
        return ImagePage(page, page[-1].image_id if has_more else None)

    def models(self) -> tuple[ModelCaptions, ...]:
        """Every model whose captions the catalogue holds, with how many images each described."""
        return tuple(self._repository.models())

    def get(self, record_id: int) -> ImageRecord:
        record = self._repository.get(record_id) if record_id >= 1 else None
        if record is None:
            raise ImageNotFound(f"No image with id {record_id}.")
        return record

    def open_file(self, record_id: int) -> tuple[ImageRecord, BinaryIO]:
        record = self.get(record_id)
        return record, self._open_stored(record)

    def _open_stored(self, record: ImageRecord) -> BinaryIO:
        try:
            return self._store.open(record.path)
        except FileNotFoundError:
            raise StoredFileMissing(f"The file of image {record.id} is missing.") from None

    def link_to_file(self, record_id: int) -> str | None:
        """A URL where the image's bytes can be fetched directly, when storage hands them out
        (a presigned bucket URL); None when they are served through this service."""
        record = self.get(record_id)
        if self._file_links is None:
            return None
        return self._file_links.link(record.path, record.content_type, download_name(record))

    def open_thumbnail(self, record_id: int) -> tuple[ImageRecord, Thumbnail]:
        """A small preview of the image, made from the original the first time it is asked for.

        Thumbnails are kept per distinct bytes, so every record of the same image shares one.
        Without a thumbnail store the original stands in for its own preview.
        """
        record = self.get(record_id)
        if self._thumbnails is None:
            return record, Thumbnail(self._open_stored(record), record.content_type)
        return record, self._thumbnails.open_or_make(
            ImageDigest(record.sha256), lambda: self._open_stored(record)
        )

    def delete(self, record_id: int) -> ImageRecord:
        """Forget the image behind this record: every caption of its bytes (all models and
        prompts), then its file and thumbnail. Returns the record named."""
        record = self.get(record_id)
        with self._lock_for(record.sha256):
            deleted = self._repository.delete_image(record.sha256)
            if not deleted:  # deleted by someone else meanwhile
                raise ImageNotFound(f"No image with id {record_id}.")
            for path in dict.fromkeys(r.path for r in deleted):
                self._drop_unused_file(record.sha256, path, quiet=True)
        return next((r for r in deleted if r.id == record_id), record)

    def _forget(self, sha256: str, path: str, record_id: int | None) -> ImageRecord | None:
        """The one rule for letting bytes go: drop the record (when one is named), then remove
        the file and its thumbnail once no record uses the path any more.

        Under the lock of these bytes, so an upload of the same bytes never finds the file
        present and then loses it. Returns the deleted record (None when there was none).
        """
        with self._lock_for(sha256):
            deleted = self._repository.delete(record_id) if record_id is not None else None
            if record_id is not None and deleted is None:
                return None
            self._drop_unused_file(sha256, path, quiet=record_id is not None)
        return deleted

    def _drop_unused_file(self, sha256: str, path: str, quiet: bool) -> None:
        """Remove the file and thumbnail once no record uses the path; the caller holds the
        lock of these bytes. ``quiet``: a storage fault is logged, not raised (the rows are
        gone, so the delete happened as far as anyone can see)."""
        if self._repository.count_with_path(path) != 0:
            return
        try:
            self._store.delete(path)
            if self._thumbnails is not None and _is_digest(sha256):
                self._thumbnails.delete(ImageDigest(sha256))
        except (StorageFull, StorageUnavailable) as error:
            if not quiet:  # a repair that could not remove: say so
                raise
            # The file left behind is an orphan that `check --repair` removes later.
            log.warning("image %s deleted, its file is left for check: %s", sha256, error)

    def readiness(self) -> Readiness:
        """Ready when the model is loaded and both kinds of storage accept writes."""
        parts = (
            self._captioner.readiness(),
            self._store.readiness(),
            self._repository.readiness(),
        )
        failing = [r for r in parts if not r.ready]
        if failing:
            # One part no retry cures makes the whole permanent: waiting cannot make it ready.
            permanent = any(r.permanent for r in failing)
            return Readiness(False, "; ".join(r.reason for r in failing), permanent)
        self.adopt_earlier_spellings()  # the model is loaded: its revision is known
        # Ready parts may still have news (a model server down, its twin up): pass it on.
        return Readiness(True, "; ".join(r.reason for r in parts if r.reason))

    def model_readiness(self) -> Readiness:
        """The model's part of readiness alone: loaded, loading, or failed for good."""
        return self._captioner.readiness()

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        """Wait for the model to load (library and CLI use; the server answers 503 instead).

        Returns the readiness once the model has loaded, or when ``timeout`` seconds passed
        first (then not ready, the reason saying it is still loading: wait again or give up).
        Raises CaptionerUnavailable (``retry_after_s`` None) when the model failed to load:
        the message says which setting to change; only a new service can load another.
        """
        model = self._captioner.wait_until_ready(timeout)
        if not model.ready and model.permanent:
            raise CaptionerUnavailable(model.reason, retry_after_s=None)
        return self.readiness()

    def check(
        self,
        repair: bool = False,
        on_problem: Callable[[StorageProblem], None] | None = None,
        orphan_grace_s: float = ORPHAN_GRACE_S,
        verify_hashes: bool = True,
    ) -> CheckReport:
        """Compare catalogue and files: orphan files and thumbnails, rows without files, bytes
        that changed.

        Files younger than ``orphan_grace_s`` without a row are left alone: they belong to
        uploads in flight (file written, row about to be committed), and a repair running
        beside a live server must not delete them. ``verify_hashes=False`` skips re-reading
        every file (the quick check a server runs at start).
        """
        problems: list[StorageProblem] = []
        # Thumbnails are listed before the records: one made meanwhile belongs to a record
        # the listing below sees. A thumbnail is a cache, so removing one in use only costs
        # a second render.
        thumbnails = list(self._thumbnails.digests()) if self._thumbnails is not None else []
        referenced: set[str] = set()
        digests_in_use: set[str] = set()
        sha256_of: dict[int | None, str] = {}
        digests: dict[str, str | None] = {}  # several records (prompts) share one file
        records = 0
        for record in self._repository.all_records():
            records += 1
            referenced.add(record.path)
            digests_in_use.add(record.sha256)
            sha256_of[record.id] = record.sha256
            if record.path not in digests:
                digests[record.path] = self._stored_digest(record.path, verify_hashes)
            stored = digests[record.path]
            if stored is None:
                problems.append(StorageProblem("missing_file", record.path, record.id))
            elif verify_hashes and stored != record.sha256:
                problems.append(StorageProblem("hash_mismatch", record.path, record.id))
        files = 0
        for path in self._store.paths():
            files += 1
            if path not in referenced and self._age_s(path) >= orphan_grace_s:
                problems.append(StorageProblem("orphan_file", path))
        problems += [
            StorageProblem("orphan_thumbnail", digest.hex)
            for digest in thumbnails
            if digest.hex not in digests_in_use
        ]
        for problem in problems:
            if on_problem is not None:
                on_problem(problem)
            if repair:
                self._repair(problem, sha256_of.get(problem.record_id))
        return CheckReport(files, records, tuple(problems), repaired=repair)

    def _repair(self, problem: StorageProblem, sha256: str | None) -> None:
        if problem.kind == "orphan_thumbnail" and self._thumbnails is not None:
            with self._lock_for(problem.path):
                self._thumbnails.delete(ImageDigest(problem.path))
            return
        # An orphan file has no record to name its digest; the store names files by it.
        self._forget(sha256 or _digest_named_in(problem.path), problem.path, problem.record_id)

    def _stored_digest(self, path: str, verify: bool) -> str | None:
        """The file's SHA-256 ("" when not verified), or None when it is gone."""
        try:
            if not self._store.exists(path):
                return None
            return self._store.digest_of(path).hex if verify else ""
        except FileNotFoundError:  # deleted by a live server between the two calls
            return None

    def _age_s(self, path: str) -> float:
        try:
            return self._store.age_s(path)
        except FileNotFoundError:  # deleted meanwhile: not an orphan any more
            return 0.0


class _LeaseKeeper:
    """Renews a claim's lease from a background thread while the model works on its key."""

    def __init__(self, claims: CaptionRepository, claim: Claim, lease_s: float) -> None:
        self._claims = claims
        self._claim = claim
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
        while not self._stop.wait(self._lease_s / 3):
            try:
                if not self._claims.renew(self._claim, self._lease_s):
                    return  # taken over; our record, if it comes second, is answered as such
            except CaptionerError:
                continue  # catalogue unreachable for a moment: try again at the next tick


class _NoObserver:
    def caption_generated(self) -> None:
        pass

    def duplicate_upload(self) -> None:
        pass


def _spells_same_directory(other: str, model: str) -> bool:
    """Whether ``other`` may name the directory ``model`` (an absolute path) another way:
    relative, with ``./`` or a trailing slash, or from another working directory. The
    caller has checked the weights are the same; the directory's own name must be too."""
    if other == model or other.startswith("openai:"):
        return False
    tail = PurePath(other.replace("\\", "/").rstrip("/")).name
    return tail == PurePath(model).name


def _stream_size(stream: BinaryIO) -> int:
    return stream.seek(0, os.SEEK_END)  # every reader gets the stream through _from_start


def _from_start(stream: BinaryIO) -> BinaryIO:
    """The one place an upload is rewound: each port reads it once, from position 0."""
    stream.seek(0)
    return stream


def _is_digest(text: str) -> bool:
    try:
        ImageDigest(text)
    except ValueError:
        return False
    return True


def _digest_named_in(path: str) -> str:
    """The digest a stored file is named by, or the path itself (a temp file's name)."""
    stem = path.rsplit("/", 1)[-1].split(".", 1)[0]
    return stem if _is_digest(stem) else path
