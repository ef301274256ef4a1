"""CaptionService: describe an upload once per distinct bytes, and keep, list and delete images."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import BinaryIO, TypeVar

from captioner.domain.caption_queue import QueuePolicy, QueueWork, QueueWorker
from captioner.domain.downloads import download_name
from captioner.domain.errors import (
    CaptionerBusy,
    CaptionerError,
    CaptionerUnavailable,
    CaptioningFailed,
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    StorageFull,
    StorageUnavailable,
    StoredFileMissing,
)
from captioner.domain.imported import CaptionImports, ImportedCaption, ImportOutcome
from captioner.domain.layout import StoredPath
from captioner.domain.model import (
    FAILED,
    PENDING,
    PERSON_MODEL,
    Caption,
    CaptionChoice,
    CaptionKey,
    Claim,
    DecodedImage,
    DeletesSeen,
    Description,
    ImageDigest,
    ImagePage,
    ImageRecord,
    ImageUpload,
    KnownImages,
    ModelCaptions,
    NewImageRecord,
    Provenance,
    QueueStatus,
    Readiness,
    Thumbnail,
)
from captioner.domain.model_spellings import EarlierSpellings
from captioner.domain.one_run_per_key import (
    DEFAULT_CLAIM_LEASE_S,
    DEFAULT_CLAIM_WAIT_S,
    DELETE_MARKS_KEPT_S,
    DELETE_STALE_S,
    BytesLocks,
    OneRunPerKey,
    Outcome,
    keep_file_after_commit,
)
from captioner.domain.ports import (
    Captioner,
    CaptionQueue,
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
    clean_caption,
    clean_original_name,
    clean_prompt,
)
from captioner.domain.storage_check import ORPHAN_GRACE_S, CheckReport, StorageCheck, StorageProblem

log = logging.getLogger(__name__)

# Enough for a few callers' model batches at once; none of these tasks waits for another.
_BATCH_THREADS = 64
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


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
        queue: CaptionQueue | None = None,
        captions_here: bool = True,
        queue_policy: QueuePolicy | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._captioner = captioner
        # The queue lives in the catalogue; ``captions_here`` False: no model in this
        # process, so synchronous uploads wait for a worker to caption them.
        self._queue = queue
        self._captions_here = captions_here
        self._policy = queue_policy or QueuePolicy()
        self._claim_lease_s = claim_lease_s
        self._claim_wait_s = claim_wait_s
        self._describing = 0
        self._describing_lock = threading.Lock()
        self._decoder = decoder
        self._store = store
        self._repository = repository
        self._thumbnails = thumbnails
        self._observer = observer or _NoObserver()
        self._file_links = file_links
        self._clock = clock or _utc_now
        self._max_upload_bytes = max_upload_bytes
        self._default_prompt = clean_prompt(default_prompt)
        self._runs = OneRunPerKey(repository, claim_lease_s, claim_wait_s)
        # describe_many's model runs and file saves, a batch's at once; threads start on first
        # use and stay (starting eight per model batch costs more than an instant model).
        self._batch_images = ThreadPoolExecutor(_BATCH_THREADS, "captioner-batch-image")
        self._bytes_locks = BytesLocks()
        self._storage_check = StorageCheck(
            store, repository, thumbnails, self._bytes_locks, self._forget
        )
        self._spellings = EarlierSpellings(captioner, repository)
        self._imports = CaptionImports(
            decoder, store, repository, self._bytes_locks, self._default_prompt
        )

    @property
    def model_name(self) -> str:
        return self._captioner.model_name

    def adopt_earlier_spellings(self) -> int:
        """Rename records kept under other spellings of the model's directory (once; see
        EarlierSpellings); returns how many were adopted."""
        return self._spellings.adopt()

    def describe(self, upload: ImageUpload) -> Description:
        """Return the stored description of these bytes, or run the model once and keep both.

        Without a model in this process the upload is queued first (ahead of asynchronous
        ones) and the call waits for a worker's caption. Either way, when no caption comes in
        time (CaptionerBusy / CaptionerUnavailable) the image stays queued: the same bytes
        sent again find it, captioned or still waiting, without a second model run.
        """
        return self._describe_counted(upload, person_answers=True)

    def describe_many(self, uploads: Sequence[ImageUpload], batch: int = 8) -> list[Outcome]:
        """``describe`` for each upload, in order, by the same rules, with the catalogue's
        work batched: one lookup for the lot, and per ``batch`` new images (the model's
        batch) one claim statement, the model on them at once and their files and records
        kept in one transaction. An image's failure is its outcome (the error), never the
        others'."""
        with self._counted():
            try:
                results = self._describe_many(uploads, max(1, batch))
            except CaptionerError as error:  # the catalogue's lookups failed: every image did
                results = [error] * len(uploads)
        for result in results:
            if isinstance(result, Description) and result.duplicate:
                self._observer.duplicate_upload()
        return results

    def _describe_counted(self, upload: ImageUpload, person_answers: bool) -> Description:
        with self._counted():
            result = self._describe(upload, person_answers)
        if result.duplicate:
            self._observer.duplicate_upload()
        return result

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """Counts a synchronous describe in progress (``idle`` is False meanwhile)."""
        with self._describing_lock:
            self._describing += 1
        try:
            yield
        finally:
            with self._describing_lock:
                self._describing -= 1

    def _describe_many(self, uploads: Sequence[ImageUpload], batch: int) -> list[Outcome]:
        if not self._captions_here:  # each waits for a worker's caption, as describe does
            return [
                _outcome_of(functools.partial(self._describe, upload, True)) for upload in uploads
            ]
        keyed: list[tuple[ImageDigest, CaptionKey] | Exception] = []
        for upload in uploads:
            try:
                keyed.append(self._key_of(upload))
            except Exception as error:
                keyed.append(error)
        # The first upload of each key speaks for it; the others are its duplicates.
        first: dict[CaptionKey, tuple[ImageUpload, ImageDigest]] = {}
        for upload, item in zip(uploads, keyed, strict=True):
            if not isinstance(item, Exception):
                first.setdefault(item[1], (upload, item[0]))
        outcomes: dict[CaptionKey, Outcome] = {
            key: Description(record, duplicate=True)
            for key, record in self._person_captions(list(first)).items()
        }
        outcomes.update(
            self._runs.describe_many(
                {
                    key: functools.partial(self._decode, upload)
                    for key, (upload, _) in first.items()
                    if key not in outcomes
                },
                lambda claimed: self._describe_new_batch(
                    [(*first[claim.key], image, claim) for image, claim in claimed]
                ),
                lambda image, claim: self._describe_new(*first[claim.key], image, claim),
                batch,
            )
        )
        for key, outcome in list(outcomes.items()):
            if (
                isinstance(outcome, (CaptionerBusy, CaptionerUnavailable))
                and outcome.retry_after_s is not None
                and self._queue is not None
            ):  # as describe does: the image waits in the queue meanwhile
                upload, digest = first[key]
                try:
                    deletes = self._repository.deletes_of(digest.hex)
                    self._keep_queued(upload, digest, key, True, deletes)
                except Exception as error:
                    outcomes[key] = error
        results: list[Outcome] = []
        answered: set[CaptionKey] = set()
        for item in keyed:
            if isinstance(item, Exception):
                results.append(item)
                continue
            outcome = outcomes[item[1]]
            if isinstance(outcome, Description) and item[1] in answered:
                outcome = dataclasses.replace(outcome, duplicate=True)
            answered.add(item[1])
            results.append(outcome)
        return results

    def _decode(self, upload: ImageUpload) -> DecodedImage:
        return self._decoder.decode(_from_start(upload.content))

    def _person_captions(self, keys: Sequence[CaptionKey]) -> dict[CaptionKey, ImageRecord]:
        """``_person_caption`` of each key, in one query."""
        asked = [key for key in keys if key.prompt == self._default_prompt]
        if not asked:
            return {}
        found = {
            record.sha256: record
            for record in self._repository.find_many(
                [key.sha256 for key in asked], PERSON_MODEL, self._default_prompt
            )
        }
        return {key: found[key.sha256] for key in asked if key.sha256 in found}

    def submit(self, upload: ImageUpload) -> Description:
        """Keep the bytes and a pending record durably and return at once; a worker captions
        it later. Bytes known already are answered with their record (whatever its status)."""
        digest, key = self._key_of(upload)
        known, deletes = self._person_caption(key), DeletesSeen.unknown()
        if known is None:
            known, deletes = self._repository.find_seeing_deletes(key.sha256, key.model, key.prompt)
        if known is not None:
            self._observer.duplicate_upload()
            return Description(known, duplicate=True)
        record, created = self._keep_queued(upload, digest, key, False, deletes)
        return Description(record, duplicate=not created)

    @property
    def idle(self) -> bool:
        """No synchronous describe is running here now (a server works the queue then)."""
        return self._describing == 0

    def _key_of(self, upload: ImageUpload) -> tuple[ImageDigest, CaptionKey]:
        prompt = clean_prompt(upload.prompt or self._default_prompt)
        digest = self._checked_digest(upload)
        self.adopt_earlier_spellings()
        return digest, CaptionKey(digest.hex, self._captioner.model_name, prompt)

    def _person_caption(self, key: CaptionKey) -> ImageRecord | None:
        """A person's caption (an edit, an import) answers for these bytes with the default
        prompt: the model never runs on an image a person described."""
        if key.prompt != self._default_prompt:
            return None
        return self._repository.find(key.sha256, PERSON_MODEL, key.prompt)

    def import_caption(self, upload: ImageUpload, caption: ImportedCaption) -> ImportOutcome:
        """Keep a caption written elsewhere for these bytes, without running the model.

        A person's words are kept as a person caption (model PERSON_MODEL, default prompt);
        another captioner's, under its model and prompt with their provenance. When the key
        holds a caption already, it stays: the outcome says whether it is the same one or a
        conflict.
        """
        return self._imports.keep(upload, self._checked_digest(upload), caption)

    def _checked_digest(self, upload: ImageUpload) -> ImageDigest:
        """The upload's digest, once its size is known to be acceptable."""
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
        return upload.digest or ImageDigest.of_stream(_from_start(upload.content))

    def _describe(self, upload: ImageUpload, person_answers: bool) -> Description:
        digest, key = self._key_of(upload)
        person = self._person_caption(key) if person_answers else None
        if person is not None:
            return Description(person, duplicate=True)
        if not self._captions_here:
            return self._describe_by_worker(upload, digest, key)
        try:
            return self._runs.describe(
                key,
                lambda: self._decoder.decode(_from_start(upload.content)),
                lambda image, claim: self._describe_new(upload, digest, image, claim),
            )
        except (CaptionerBusy, CaptionerUnavailable) as error:
            if error.retry_after_s is not None and self._queue is not None:
                # The client is told to retry; the image waits in the queue meanwhile.
                deletes = self._repository.deletes_of(digest.hex)
                self._keep_queued(upload, digest, key, True, deletes)
            raise

    def _describe_by_worker(
        self, upload: ImageUpload, digest: ImageDigest, key: CaptionKey
    ) -> Description:
        known, deletes = self._repository.find_seeing_deletes(key.sha256, key.model, key.prompt)
        if known is not None and known.captioned:
            return Description(known, duplicate=True)
        record, created = self._keep_queued(upload, digest, key, True, deletes)
        if record.status == PENDING:
            settled = self._queue_port.await_settled(key, self._claim_wait_s)
            record = settled or record
        if record.status == FAILED:
            raise CaptioningFailed(_failure_message(record))
        if record.status == PENDING:
            raise CaptionerBusy(
                f"Image {record.id} is queued; no worker captioned it within "
                f"{self._claim_wait_s:g} s. Upload the same bytes again later (they are kept) "
                f"or poll GET /images/{record.id}.",
                retry_after_s=max(1, round(min(self._claim_lease_s, 30))),
            )
        return Description(record, duplicate=not created)

    def _keep_queued(
        self,
        upload: ImageUpload,
        digest: ImageDigest,
        key: CaptionKey,
        urgent: bool,
        deletes: DeletesSeen,
    ) -> tuple[ImageRecord, bool]:
        """Store the bytes, then a pending record for the key (file first, as for captions).
        ``deletes``: the marks of deletes of the bytes, read before this (with a lookup)."""
        queue = self._queue_port
        image = self._decoder.decode(_from_start(upload.content))
        with self._bytes_locks.of(digest.hex):
            path = self._store.save(
                digest, _from_start(upload.content), image.extension, upload.local_path
            )
            record, created, committed = queue.enqueue_seeing_deletes(
                NewImageRecord(
                    sha256=digest.hex,
                    path=path,
                    description="",
                    model=key.model,
                    prompt=key.prompt,
                    width=image.width,
                    height=image.height,
                    content_type=image.content_type,
                    original_name=clean_original_name(upload.original_name),
                    status=PENDING,
                ),
                urgent=urgent,
            )
            keep_file_after_commit(
                self._store,
                record,
                path,
                digest,
                lambda: _from_start(upload.content),
                image.extension,
                (deletes, lambda: committed),
            )
        return record, created

    @property
    def _queue_port(self) -> CaptionQueue:
        if self._queue is None:
            raise CaptionerUnavailable(
                "This catalogue keeps no caption queue: upload synchronously.", retry_after_s=None
            )
        return self._queue

    # --- the queue --------------------------------------------------------------------------

    def queue_status(self, count_captioned: bool = True) -> QueueStatus:
        """Counts by status, the oldest pending caption's age and the workers alive
        (``count_captioned`` False: without counting every caption, for probes and gauges)."""
        return self._queue_port.queue_status(self._policy.alive_s, count_captioned)

    def jobs(self, status: str | None = None, limit: int = 1000) -> list[ImageRecord]:
        """The queue's records: pending and failed (or only ``status``), oldest first."""
        if status not in (None, PENDING, FAILED):
            raise InvalidRequest(f"status must be {PENDING} or {FAILED}, got {status!r}.")
        return list(self._queue_port.jobs(status, limit))

    def retry(self, record_id: int | None = None) -> int:
        """Queue a failed caption again (every failed one without ``record_id``); how many."""
        if record_id is not None and self.get(record_id).status != FAILED:
            raise InvalidRequest(f"Image {record_id} has not failed: nothing to retry.")
        return self._queue_port.retry(record_id)

    def cancel(self, record_id: int) -> ImageRecord:
        """Take a pending caption off the queue: its record goes, and the file when no other
        record uses it."""
        record = self.get(record_id)
        if record.status != PENDING:
            raise InvalidRequest(f"Image {record_id} is {record.status}, not pending.")
        cancelled = self._forget(record.sha256, record.path, record_id)
        if cancelled is None:
            raise ImageNotFound(f"No image with id {record_id}.")
        return cancelled

    def queue_worker(self, name: str, when_idle: bool = False) -> QueueWorker:
        """A worker of the queue with this service's model; ``when_idle``: it only takes a
        batch while no synchronous describe runs here (a server with a model)."""
        queue = self._queue_port
        work = QueueWork(
            self._captioner,
            self._decoder,
            self._store,
            queue,
            self._observer,
            self._claim_lease_s,
            self._policy,
        )
        return QueueWorker(
            work,
            queue,
            name,
            self._captioner.model_name,
            self._policy,
            # Not while the model is down or loading (its claims would only be given back),
            # and for a server, not while an upload waits for the model.
            may_work=lambda: (self.idle or not when_idle) and self._captioner.readiness().ready,
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
            record, created, deletes = self._repository.complete_seeing_deletes(
                claim, self._captioned(upload, digest, image, key, caption, path)
            )
            keep_file_after_commit(
                self._store,
                record,
                path,
                digest,
                lambda: _from_start(upload.content),
                image.extension,
                # Read by the claim (before the model ran and before save) and by the commit.
                (claim.deletes, lambda: deletes),
            )
        return Description(record, duplicate=not created)

    def _describe_new_batch(
        self, claimed: Sequence[tuple[ImageUpload, ImageDigest, DecodedImage, Claim]]
    ) -> list[Outcome]:
        """``_describe_new`` for a model batch: the images go to the model at once (the
        batcher, or the model server, runs them together), then every file is saved and
        every record written with the claims' release in one transaction."""
        with self._runs.lease_kept(*(claim for *_, claim in claimed)):
            captions = _each(
                self._batch_images,
                lambda item: self._captioner.describe(item[2], item[3].key.prompt),
                claimed,
            )
        outcomes: list[Outcome] = [
            caption if isinstance(caption, Exception) else CaptioningFailed("not kept")
            for caption in captions
        ]
        made = [
            (index, caption)
            for index, caption in enumerate(captions)
            if isinstance(caption, Caption)
        ]
        for _ in made:
            self._observer.caption_generated()
        with self._bytes_locks.of_all(digest.hex for _, digest, _, _ in claimed):
            saved = _each(
                self._batch_images,
                lambda made_one: self._store.save(
                    claimed[made_one[0]][1],
                    _from_start(claimed[made_one[0]][0].content),
                    claimed[made_one[0]][2].extension,
                    claimed[made_one[0]][0].local_path,
                ),
                made,
            )
            kept: list[tuple[int, str, NewImageRecord]] = []
            for (index, caption), path in zip(made, saved, strict=True):
                if isinstance(path, Exception):
                    outcomes[index] = path
                    continue
                upload, digest, image, claim = claimed[index]
                kept.append(
                    (index, path, self._captioned(upload, digest, image, claim.key, caption, path))
                )
            try:
                stored = self._repository.complete_many(
                    [(claimed[index][3], new) for index, _, new in kept]
                )
            except Exception as error:  # the catalogue failed: none of these was kept
                for index, _, _ in kept:
                    outcomes[index] = error
                return outcomes
            for (index, path, _), (record, created, deletes) in zip(kept, stored, strict=True):
                upload, digest, image, claim = claimed[index]
                try:
                    keep_file_after_commit(
                        self._store,
                        record,
                        path,
                        digest,
                        functools.partial(_from_start, upload.content),
                        image.extension,
                        (claim.deletes, functools.partial(_as_read, deletes)),
                    )
                except Exception as error:
                    outcomes[index] = error
                    continue
                outcomes[index] = Description(record, duplicate=not created)
        return outcomes

    def _captioned(
        self,
        upload: ImageUpload,
        digest: ImageDigest,
        image: DecodedImage,
        key: CaptionKey,
        caption: Caption,
        path: str,
    ) -> NewImageRecord:
        """The record of a caption the model just made of this upload, its file at ``path``."""
        return NewImageRecord(
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
        )

    def known(self, sha256s: Sequence[str]) -> KnownImages:
        """Which of these digests the current model has described with the default prompt, or
        a person has (their caption is what an upload of those bytes answers with).

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
        found: dict[str, ImageRecord] = {}
        for model in (self._captioner.model_name, PERSON_MODEL):  # a person's wins
            for record in self._repository.find_many(asked, model, self._default_prompt):
                found[record.sha256] = record
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

    def recaption(
        self, record: ImageRecord, prompt: str = "", replace_edits: bool = False
    ) -> Description:
        """Describe a stored image with the current model and ``prompt``; its other captions stay,
        a person's caption included (it is still the one shown) unless ``replace_edits``: then
        the person's caption goes and the model's new one is shown.

        Goes the way of every upload (deduplication, batching), so several workers re-captioning
        the same library run the model once per image.
        """
        try:
            stored = self._open_stored(record)
        except StoredFileMissing:
            if self._repository.get(record.id) is None:  # deleted since it was listed
                raise ImageNotFound(
                    f"Image {record.id} was deleted while this ran: nothing to caption."
                ) from None
            raise
        with stored as content:
            result = self._describe_counted(  # the model is asked, whoever described it before
                ImageUpload(
                    content=content,
                    original_name=record.original_name,
                    prompt=prompt,
                    digest=ImageDigest(record.sha256),
                ),
                person_answers=False,
            )
        if not result.duplicate and self._deleted_meanwhile(record, result.record):
            raise ImageNotFound(f"Image {record.id} was deleted while this ran: nothing kept.")
        if replace_edits:
            self._repository.delete_captions(record.sha256, PERSON_MODEL)
        return result

    def _deleted_meanwhile(self, listed: ImageRecord, made: ImageRecord) -> bool:
        """Whether ``made``, a re-caption of ``listed``'s bytes, is all they have: the image was
        deleted after its file was read, and the new caption stored the bytes anew. Then it
        is forgotten again (record, then the file unless an upload of the same bytes since
        uses it): a re-caption must not bring a deleted image back."""
        if [r.id for r in self._repository.captions_of(listed.sha256)] != [made.id]:
            return False
        self._forget(made.sha256, made.path, made.id)
        return True

    def edit(self, record_id: int, text: str, by: str) -> ImageRecord:
        """Keep a person's caption of the image behind this record; returns its record.

        The caption is a record of its own (model "person", the default prompt) that listings
        show before any model's; the model's captions stay. A second edit replaces the first.
        ``by`` names who wrote it (the API key's name, "cli", ...); the time is now.
        """
        description = clean_caption(text)
        record = self.get(record_id)
        edited = self._repository.replace(
            NewImageRecord(
                sha256=record.sha256,
                path=record.path,
                description=description,
                model=PERSON_MODEL,
                prompt=self._default_prompt,
                width=record.width,
                height=record.height,
                content_type=record.content_type,
                original_name=record.original_name,
                provenance=Provenance.of(
                    None,
                    {
                        "source": PERSON_MODEL,
                        "by": by,
                        "at": self._clock().astimezone(timezone.utc).isoformat(),
                    },
                ),
            )
        )
        if edited is None:  # deleted between the lookup and the write
            raise ImageNotFound(f"No image with id {record_id}.")
        return edited

    def export(self, model: str | None = None, prompt: str | None = None) -> Iterator[ImageRecord]:
        """Every record, oldest first, streamed page by page; only ``model``'s / ``prompt``'s
        when given."""
        if prompt is not None:
            prompt = clean_prompt(prompt)  # stored prompts are cleaned: compare like with like
        for record in self._repository.all_records():
            if not record.captioned:
                continue  # queued or failed: no caption to export yet
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
        gone, so the delete happened as far as anyone can see).

        Marked in flight in the catalogue from before the count until the file is settled,
        so uploads of these bytes on other replicas know to re-check their file
        (file_may_be_gone says why that suffices). A fault leaves the mark in flight: what
        the store did with the file is not known (a request that timed out may still be
        carried out), so those uploads go on re-checking until a delete an hour later
        (DELETE_STALE_S) counts it dead.
        """
        self._repository.begin_delete(sha256)
        if self._repository.count_with_path(path) != 0:
            self._repository.end_delete(sha256, DELETE_MARKS_KEPT_S, DELETE_STALE_S)
            return
        kept = self._bytes_if_stored(path)
        try:
            # No file to read means none to remove: one there now was stored since, by an
            # upload on another replica whose record this count may have missed.
            if kept is not None:
                self._store.delete(path)
            if self._thumbnails is not None and _is_digest(sha256):
                self._thumbnails.delete(ImageDigest(sha256))
            self._put_back_if_used(path, kept)
        except (StorageFull, StorageUnavailable) as error:
            if not quiet:  # a repair that could not remove: say so
                raise
            # The file left behind is an orphan that `check --repair` removes later.
            log.warning("image %s deleted, its file is left for check: %s", sha256, error)
            return
        self._repository.end_delete(sha256, DELETE_MARKS_KEPT_S, DELETE_STALE_S)

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
        """Ready when the model is loaded (without one here: a worker is alive), both kinds
        of storage accept writes, and the queue is not stuck."""
        parts = (
            self._captioner.readiness() if self._captions_here else Readiness.ok(),
            self._store.readiness(),
            self._repository.readiness(),
            self._queue_readiness(),
        )
        failing = [r for r in parts if not r.ready]
        if failing:
            # One part no retry cures makes the whole permanent: waiting cannot make it ready.
            permanent = any(r.permanent for r in failing)
            return Readiness(False, "; ".join(r.reason for r in failing), permanent)
        self.adopt_earlier_spellings()  # the model is loaded: its revision is known
        # Ready parts may still have news (a model server down, its twin up): pass it on.
        return Readiness(True, "; ".join(r.reason for r in parts if r.reason))

    def _queue_readiness(self) -> Readiness:
        if self._queue is None:
            return Readiness.ok()
        try:
            status = self._queue.queue_status(self._policy.alive_s, count_captioned=False)
        except CaptionerError:
            return Readiness.ok()  # the catalogue's own part says what is wrong
        if not self._captions_here and not status.workers:
            return Readiness(
                False,
                "no model here and no queue worker is alive: start `captioner worker` "
                "(asynchronous uploads are still kept)",
            )
        age = status.oldest_pending_age_s
        if age is not None and age > self._policy.stuck_s:
            return Readiness(
                False,
                f"the caption queue is stuck: {status.pending} pending, the oldest for "
                f"{age:.0f} s, {len(status.workers)} worker(s) alive",
            )
        return Readiness.ok()

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


def _failure_message(record: ImageRecord) -> str:
    return (
        f"The model failed on image {record.id} {record.attempts} times: {record.failure}. "
        f"`captioner jobs retry {record.id}` queues it again."
    )


def _as_read(deletes: DeletesSeen) -> DeletesSeen:
    """The marks a batch's write read as it committed (keep_file_after_commit asks for them)."""
    return deletes


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _outcome_of(describe: Callable[[], Description]) -> Outcome:
    try:
        return describe()
    except Exception as error:  # one image's failure is its outcome
        return error


def _each(
    pool: ThreadPoolExecutor, work: Callable[[_Item], _Result], items: Sequence[_Item]
) -> list[_Result | Exception]:
    """``work`` on every item at once on ``pool``, each result or what it raised."""

    def one(item: _Item) -> _Result | Exception:
        try:
            return work(item)
        except Exception as error:
            return error

    if len(items) <= 1:
        return [one(item) for item in items]
    return list(pool.map(one, items))


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
