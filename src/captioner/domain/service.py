"""CaptionService: describe an upload once per distinct bytes, and keep, list and delete images."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from captioner.domain.downloads import download_name
from captioner.domain.errors import (
    CaptionerUnavailable,
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    StorageFull,
    StorageUnavailable,
    StoredFileMissing,
)
from captioner.domain.layout import StoredPath
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
from captioner.domain.model_spellings import EarlierSpellings
from captioner.domain.one_run_per_key import (
    DEFAULT_CLAIM_LEASE_S,
    DEFAULT_CLAIM_WAIT_S,
    BytesLocks,
    OneRunPerKey,
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
from captioner.domain.storage_check import ORPHAN_GRACE_S, CheckReport, StorageCheck, StorageProblem

log = logging.getLogger(__name__)


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
        self._runs = OneRunPerKey(repository, claim_lease_s, claim_wait_s)
        self._bytes_locks = BytesLocks()
        self._storage_check = StorageCheck(
            store, repository, thumbnails, self._bytes_locks, self._forget
        )
        self._spellings = EarlierSpellings(captioner, repository)

    @property
    def model_name(self) -> str:
        return self._captioner.model_name

    def adopt_earlier_spellings(self) -> int:
        """Rename records kept under other spellings of the model's directory (once; see
        EarlierSpellings); returns how many were adopted."""
        return self._spellings.adopt()

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
        key = CaptionKey(digest.hex, self._captioner.model_name, prompt)
        return self._runs.describe(
            key,
            lambda: self._decoder.decode(_from_start(upload.content)),
            lambda image, claim: self._describe_new(upload, digest, image, claim),
        )

    def _describe_new(
        self, upload: ImageUpload, digest: ImageDigest, image: DecodedImage, claim: Claim
    ) -> Description:
        """Caption before storing: a model failure leaves nothing behind. No transaction or
        lock is open while the model works; its claim's lease is renewed meanwhile."""
        key = claim.key
        with self._runs.lease_kept(claim):
            caption = self._captioner.describe(image, key.prompt)
        self._observer.caption_generated()
        # File first, then row, so a crash in between leaves at most an orphan file that
        # `check` removes; the row's commit releases the claim.
        with self._bytes_locks.of(digest.hex):
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
            # A replica's delete may have removed the file after `save` found it present and
            # before this row committed; the row is visible now, so a later delete keeps it.
            if record.path == path and not self._store.exists(path):
                self._store.save(digest, _from_start(upload.content), image.extension)
        return Description(record, duplicate=not created)

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
        with self._bytes_locks.of(record.sha256):
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
        with self._bytes_locks.of(sha256):
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
        kept = self._bytes_if_stored(path)
        try:
            self._store.delete(path)
            if self._thumbnails is not None and _is_digest(sha256):
                self._thumbnails.delete(ImageDigest(sha256))
            self._put_back_if_used(path, kept)
        except (StorageFull, StorageUnavailable) as error:
            if not quiet:  # a repair that could not remove: say so
                raise
            # The file left behind is an orphan that `check --repair` removes later.
            log.warning("image %s deleted, its file is left for check: %s", sha256, error)

    def _bytes_if_stored(self, path: str) -> bytes | None:
        try:
            with self._store.open(path) as stored:
                return stored.read()
        except FileNotFoundError:
            return None

    def _put_back_if_used(self, path: str, kept: bytes | None) -> None:
        """Across replicas BytesLocks order nothing: a record of these bytes that committed
        after the count above, whose upload checked the file before the delete, needs the
        file back. Together with the upload's check after its commit, the last word on the
        file always comes from a side that saw every surviving record."""
        if kept is None or self._repository.count_with_path(path) == 0:
            return
        stored = StoredPath.parse(path)
        self._store.save(stored.digest, io.BytesIO(kept), stored.extension)

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
        return self._storage_check.run(repair, on_problem, orphan_grace_s, verify_hashes)


class _NoObserver:
    def caption_generated(self) -> None:
        pass

    def duplicate_upload(self) -> None:
        pass


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
