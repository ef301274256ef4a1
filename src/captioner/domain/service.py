"""CaptionService: describe an upload once per distinct bytes, and keep, list and delete images."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import BinaryIO

from captioner.domain.errors import (
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
)
from captioner.domain.model import (
    CheckReport,
    Description,
    ImageDigest,
    ImagePage,
    ImageRecord,
    ImageUpload,
    NewImageRecord,
    Readiness,
    StorageProblem,
    Thumbnail,
)
from captioner.domain.ports import (
    Captioner,
    CaptionRepository,
    DescribeObserver,
    ImageDecoder,
    ImageStore,
    ThumbnailStore,
)

MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100
MAX_PROMPT_CHARS = 300
MAX_NAME_CHARS = 255
ORPHAN_GRACE_S = 300.0
MAX_IMAGE_ID = 2**63 - 1  # SQLite's INTEGER; a bigger id can name no image
_BYTES_LOCKS = 64

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
    ) -> None:
        self._captioner = captioner
        self._decoder = decoder
        self._store = store
        self._repository = repository
        self._thumbnails = thumbnails
        self._observer = observer or _NoObserver()
        self._max_upload_bytes = max_upload_bytes
        self._default_prompt = clean_prompt(default_prompt)
        self._inflight: dict[_Key, Future[Description]] = {}
        self._inflight_lock = threading.Lock()
        # Storing and deleting the same bytes must not interleave: a delete that removes the
        # file just after an upload found it present would leave that upload's row without
        # its file. Striped by digest, so different images never wait for each other.
        self._bytes_locks = [threading.Lock() for _ in range(_BYTES_LOCKS)]

    @property
    def model_name(self) -> str:
        return self._captioner.model_name

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
            raise InvalidImage("The file is empty: upload an image (JPEG, PNG, WebP, ...).")
        if size > self._max_upload_bytes:
            raise ImageTooLarge(
                f"The file is {size} bytes; the limit is {self._max_upload_bytes} bytes. "
                "Upload a smaller image."
            )
        digest = upload.digest or ImageDigest.of_stream(upload.content)
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
            # Same bytes are being described right now: wait for that run instead of a second.
            return replace(running.result(), duplicate=True)
        try:
            result = self._describe_new(upload.content, digest, prompt, upload.original_name)
        except BaseException as error:
            mine.set_exception(error)
            raise
        else:
            mine.set_result(result)
            return result
        finally:
            with self._inflight_lock:
                del self._inflight[key]

    def _describe_new(
        self, content: BinaryIO, digest: ImageDigest, prompt: str, original_name: str | None
    ) -> Description:
        # A run that finished between our first lookup and taking the lead has stored it.
        stored = self._repository.find(digest.hex, self._captioner.model_name, prompt)
        if stored is not None:
            return Description(stored, duplicate=True)
        content.seek(0)
        image = self._decoder.decode(content)
        # Caption before storing: a model failure leaves nothing behind. Then file, then row,
        # so a crash in between leaves at most an orphan file that `check` removes.
        text = self._captioner.describe(image, prompt)
        self._observer.caption_generated()
        with self._lock_for(digest.hex):
            content.seek(0)
            path = self._store.save(digest, content, image.extension)
            record, created = self._repository.add(
                NewImageRecord(
                    sha256=digest.hex,
                    path=path,
                    description=text,
                    model=self._captioner.model_name,
                    prompt=prompt,
                    width=image.width,
                    height=image.height,
                    content_type=image.content_type,
                    original_name=clean_original_name(original_name),
                )
            )
        return Description(record, duplicate=not created)

    def _lock_for(self, sha256: str) -> threading.Lock:
        return self._bytes_locks[int(sha256[:8], 16) % _BYTES_LOCKS]

    def list(
        self, limit: int = DEFAULT_LIST_LIMIT, before: int | None = None, query: str | None = None
    ) -> ImagePage:
        """Newest first, or best match first when ``query`` has words to search for."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}.")
        if before is not None and not 1 <= before <= MAX_IMAGE_ID:
            raise InvalidRequest(f"before must be a positive image id, got {before}.")
        words = (query or "").strip() or None
        # One extra row tells whether there is a next page without a COUNT(*).
        rows = list(self._repository.list(limit + 1, before, words))
        page = tuple(rows[:limit])
        has_more = len(rows) > limit and words is None
        return ImagePage(page, page[-1].id if has_more else None)

    def get(self, record_id: int) -> ImageRecord:
        record = self._repository.get(record_id) if 1 <= record_id <= MAX_IMAGE_ID else None
        if record is None:
            raise ImageNotFound(f"No image with id {record_id}.")
        return record

    def open_file(self, record_id: int) -> tuple[ImageRecord, BinaryIO]:
        record = self.get(record_id)
        try:
            return record, self._store.open(record.path)
        except FileNotFoundError:
            raise ImageNotFound(
                f"The file of image {record_id} is missing; run `captioner check --repair`."
            ) from None

    def open_thumbnail(self, record_id: int) -> tuple[ImageRecord, Thumbnail]:
        """A small preview of the image, made from the original the first time it is asked for.

        Thumbnails are kept per distinct bytes, so every record of the same image shares one.
        Without a thumbnail store the original stands in for its own preview.
        """
        record = self.get(record_id)
        if self._thumbnails is None:
            _, original = self.open_file(record_id)
            return record, Thumbnail(original, record.content_type)
        digest = ImageDigest(record.sha256)
        kept = self._thumbnails.open(digest)
        if kept is not None:
            return record, kept
        _, original = self.open_file(record_id)
        with original:
            return record, self._thumbnails.make(digest, original)

    def delete(self, record_id: int) -> ImageRecord:
        """Forget the record; remove its file and thumbnail when no other record uses the bytes."""
        record = self.get(record_id)
        with self._lock_for(record.sha256):
            deleted = self._repository.delete(record_id)
            if deleted is None:  # deleted by someone else meanwhile
                raise ImageNotFound(f"No image with id {record_id}.")
            if self._repository.count_with_path(deleted.path) == 0:
                self._store.delete(deleted.path)
                if self._thumbnails is not None:
                    self._thumbnails.delete(ImageDigest(deleted.sha256))
        return deleted

    def readiness(self) -> Readiness:
        """Ready when the model is loaded and both kinds of storage accept writes."""
        parts = (
            self._captioner.readiness(),
            self._store.readiness(),
            self._repository.readiness(),
        )
        reasons = [r.reason for r in parts if not r.ready]
        if reasons:
            return Readiness(False, "; ".join(reasons))
        # Ready parts may still have news (a model server down, its twin up): pass it on.
        return Readiness(True, "; ".join(r.reason for r in parts if r.reason))

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        """Wait for the model to load (library and CLI use; the server answers 503 instead)."""
        self._captioner.wait_until_ready(timeout)
        return self.readiness()

    def check(
        self,
        repair: bool = False,
        on_problem: Callable[[StorageProblem], None] | None = None,
        orphan_grace_s: float = ORPHAN_GRACE_S,
        verify_hashes: bool = True,
    ) -> CheckReport:
        """Compare catalogue and files: orphan files, rows without files, bytes that changed.

        Files younger than ``orphan_grace_s`` without a row are left alone: they belong to
        uploads in flight (file written, row about to be committed), and a repair running
        beside a live server must not delete them. ``verify_hashes=False`` skips re-reading
        every file (the quick check a server runs at start).
        """
        problems: list[StorageProblem] = []
        referenced: set[str] = set()
        digests: dict[str, str | None] = {}  # several records (prompts) share one file
        records = 0
        for record in self._repository.all_records():
            records += 1
            referenced.add(record.path)
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
        for problem in problems:
            if on_problem is not None:
                on_problem(problem)
            if not repair:
                continue
            if problem.record_id is not None:
                self._repository.delete(problem.record_id)
            if (
                problem.kind != "missing_file"
                and self._repository.count_with_path(problem.path) == 0
            ):
                self._store.delete(problem.path)
        return CheckReport(files, records, tuple(problems), repaired=repair)

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


class _NoObserver:
    def caption_generated(self) -> None:
        pass

    def duplicate_upload(self) -> None:
        pass


def clean_prompt(prompt: str | None) -> str:
    """Prompts are short text; whitespace is normalised so equal prompts dedupe together."""
    text = " ".join((prompt or "").split())
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The prompt is longer than {MAX_PROMPT_CHARS} characters.")
    return text


def clean_original_name(name: str | None) -> str | None:
    """Keep the client's file name as display metadata only: base name, printable, capped."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(ch for ch in base if ch.isprintable())
    trimmed = printable.strip().strip(".")[:MAX_NAME_CHARS]
    return trimmed or None


def _stream_size(stream: BinaryIO) -> int:
    position = stream.tell()
    size = stream.seek(0, os.SEEK_END)
    stream.seek(position)
    return size
