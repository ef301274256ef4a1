"""In-memory fakes of every port, for tests that must not load torch or touch disk."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import BinaryIO

from captioner.domain.access import ApiKey
from captioner.domain.errors import (
    CaptionerUnavailable,
    CaptioningFailed,
    InvalidImage,
    KeyNameTaken,
    UnsupportedImageType,
)
from captioner.domain.layout import StoredPath
from captioner.domain.model import (
    CAPTIONED,
    FAILED,
    PENDING,
    Caption,
    CaptionChoice,
    CaptionDone,
    CaptionKey,
    Claim,
    DecodedImage,
    DeletesSeen,
    Description,
    ImageDigest,
    ImageRecord,
    ImageUpload,
    ListedImage,
    ModelCaptions,
    NewImageRecord,
    Provenance,
    QueuedCaption,
    QueueStatus,
    Readiness,
    Thumbnail,
    WorkerSeen,
    shown_caption,
)
from captioner.domain.service import CaptionService

IMAGE_MAGIC = b"IMG:"


def fake_image(content: str | bytes) -> bytes:
    """Bytes the FakeImageDecoder accepts as an image."""
    return IMAGE_MAGIC + (content.encode() if isinstance(content, str) else content)


class FakeImageDecoder:
    """Accepts bytes starting with IMG: as a 10x20 PNG; anything else is not an image.

    Reads from where the stream stands, as the port allows: a caller that forgot to rewind
    hands it no image.
    """

    def decode(self, content: BinaryIO) -> DecodedImage:
        data = content.read()
        if not data.startswith(IMAGE_MAGIC):
            raise UnsupportedImageType("This file is not a supported image.")
        if data == IMAGE_MAGIC:
            raise InvalidImage("The image is truncated.")
        return DecodedImage("PNG", "image/png", "png", 10, 20, pixels=data)


class FakeCaptioner:
    """Describes an image as "a picture of <sha prefix>"; counts calls; can be slow or fail."""

    def __init__(self, model_name: str = "fake-model", delay_s: float = 0.0) -> None:
        self._model_name = model_name
        self.delay_s = delay_s
        self.revision = "fake-revision-1"
        self.calls: list[tuple[bytes, str]] = []
        self.fail_on: set[bytes] = set()
        self.unexpected: Exception | None = None  # raised as-is, like a bug in an adapter
        self.ready = Readiness.ok()
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def call_count(self) -> int:
        with self._lock:
            return len(self.calls)

    @property
    def provenance(self) -> Provenance:
        return Provenance.of(self.revision, {"max_new_tokens": 30, "num_beams": 1})

    def readiness(self) -> Readiness:
        return self.ready

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        return self.ready

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        if not self.ready.ready:
            retry_after_s = None if self.ready.permanent else 10
            raise CaptionerUnavailable(self.ready.reason, retry_after_s=retry_after_s)
        pixels = image.pixels
        assert isinstance(pixels, bytes)
        with self._lock:
            self.calls.append((pixels, prompt))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.unexpected is not None:
            raise self.unexpected
        if pixels in self.fail_on:
            raise CaptioningFailed("The model failed to describe this image (RuntimeError).")
        words = f"a picture of {hashlib.sha256(pixels).hexdigest()[:8]}"
        return Caption(f"{prompt} {words}".strip(), duration_ms=self.delay_s * 1000 + 1.5)


class InMemoryImageStore:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.saved_at: dict[str, float] = {}
        self.ready = Readiness.ok()
        self.local_paths: list[str | None] = []

    def save(
        self,
        digest: ImageDigest,
        content: BinaryIO,
        extension: str,
        local_path: str | None = None,
    ) -> str:
        path = str(StoredPath(digest, extension))
        self.local_paths.append(local_path)
        self.saved_at.setdefault(path, time.monotonic())
        self.files.setdefault(path, content.read())
        return path

    def open(self, path: str) -> BinaryIO:
        if path not in self.files:
            raise FileNotFoundError(path)
        return io.BytesIO(self.files[path])

    def exists(self, path: str) -> bool:
        return path in self.files

    def delete(self, path: str) -> None:
        self.files.pop(path, None)

    def paths(self) -> Iterator[str]:
        yield from sorted(self.files)

    def digest_of(self, path: str) -> ImageDigest:
        return ImageDigest.of_bytes(self.files[path])

    def age_s(self, path: str) -> float:
        # Files put straight into ``files`` by a test are old; saved ones are as old as they are.
        saved = self.saved_at.get(path)
        return float("inf") if saved is None else time.monotonic() - saved

    def readiness(self) -> Readiness:
        return self.ready


class InMemoryThumbnailStore:
    """Keeps "thumbnails" (a marker + the original's bytes) per digest; counts those it made."""

    content_type = "image/webp"

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.made = 0
        self.lookups = 0  # how often the kept thumbnails were looked at

    def open_or_make(self, digest: ImageDigest, open_original: Callable[[], BinaryIO]) -> Thumbnail:
        self.lookups += 1
        if digest.hex not in self.files:
            with open_original() as original:
                data = original.read()
            if not data.startswith(IMAGE_MAGIC):
                raise InvalidImage("No thumbnail could be made of this image.")
            self.files[digest.hex] = b"THUMB:" + data
            self.made += 1
        return Thumbnail(io.BytesIO(self.files[digest.hex]), self.content_type)

    def delete(self, digest: ImageDigest) -> None:
        self.files.pop(digest.hex, None)

    def digests(self) -> Iterator[ImageDigest]:
        yield from (ImageDigest(name) for name in sorted(self.files))


class InMemoryKeyRing:
    """The KeyRing port in memory: keys by name with their hashes, sessions by token hash."""

    def __init__(self) -> None:
        self.key_hashes: dict[str, tuple[ApiKey, str]] = {}
        self.sessions: dict[str, tuple[str, datetime]] = {}
        self.writes = 0

    def add_key(self, key: ApiKey, key_sha256: str) -> None:
        if key.name in self.key_hashes:
            raise KeyNameTaken(f"An API key named {key.name!r} exists already.")
        self.key_hashes[key.name] = (key, key_sha256)
        self.writes += 1

    def key_with_hash(self, key_sha256: str) -> tuple[ApiKey, str] | None:
        for key, digest in self.key_hashes.values():
            if digest == key_sha256:
                return key, digest
        return None

    def all_keys(self) -> Sequence[ApiKey]:
        return sorted((key for key, _ in self.key_hashes.values()), key=lambda k: k.created_at)

    def has_keys(self) -> bool:
        return bool(self.key_hashes)

    def remove_key(self, name: str) -> bool:
        self.sessions = {t: s for t, s in self.sessions.items() if s[0] != name}
        self.writes += 1
        return self.key_hashes.pop(name, None) is not None

    def mark_used(self, name: str, when: datetime) -> None:
        key, digest = self.key_hashes[name]
        self.key_hashes[name] = (replace(key, last_used_at=when), digest)
        self.writes += 1

    def add_session(self, token_sha256: str, key_name: str, expires_at: datetime) -> None:
        self.sessions[token_sha256] = (key_name, expires_at)
        self.writes += 1

    def key_of_session(self, token_sha256: str, now: datetime) -> tuple[ApiKey, str] | None:
        session = self.sessions.get(token_sha256)
        if session is None or session[1] <= now or session[0] not in self.key_hashes:
            return None
        return self.key_hashes[session[0]][0], token_sha256

    def remove_session(self, token_sha256: str) -> None:
        self.sessions.pop(token_sha256, None)
        self.writes += 1


class InMemoryCaptionRepository(InMemoryKeyRing):
    """The catalogue in a dict; claims are leased like the real ones, on this process's clock.

    Like the real ones, it keeps the API keys too.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock  # leases expire on it; tests pass one they can move
        self.renewals = 0
        self.rows: dict[int, ImageRecord] = {}
        self.claims: dict[CaptionKey, tuple[str, float]] = {}
        self.batch_lookups = 0  # find_many calls: each stands for one database query
        self.claim_statements = 0  # claim_many calls: one statement each
        self.batch_writes = 0  # complete_many calls: one transaction each
        self._next_id = 1
        self._lock = threading.Lock()
        self.gets = 0  # SELECTs by id, as a database would run them
        self._changed = threading.Condition(self._lock)
        self.urgent: set[int] = set()  # the queue's order: urgent ids first, then by id
        self.due_at: dict[int, float] = {}  # a retry's backoff, on ``clock``
        self.workers: dict[str, tuple[str, float]] = {}
        self.hits: dict[tuple[str, str], list[float]] = {}  # RecentHits, on ``clock``
        # BytesDeletes: sha256 -> (deletes in flight, latest ticket, changed at on ``clock``)
        self.deletes: dict[str, tuple[int, str, float]] = {}
        self.marks_read = 0  # deletes_of calls and claims: each a read of the marks

    def wait_s(self, counter: str, who: str, limit: int, window_s: float) -> float | None:
        with self._lock:
            return self._hits_wait(counter, who, limit, window_s)

    def add_hit(self, counter: str, who: str, limit: int, window_s: float) -> float | None:
        with self._lock:
            wait = self._hits_wait(counter, who, limit, window_s)
            if wait is None:
                self.hits.setdefault((counter, who), []).append(self.clock())
            return wait

    def _hits_wait(self, counter: str, who: str, limit: int, window_s: float) -> float | None:
        now = self.clock()
        recent = [at for at in self.hits.get((counter, who), []) if at > now - window_s]
        self.hits[(counter, who)] = recent
        return None if len(recent) < limit else window_s - (now - recent[-limit])

    def claim(self, key: CaptionKey, lease_s: float) -> Claim | None:
        with self._lock:
            held = self.claims.get(key)
            if held is not None and held[1] > self.clock():
                return None
            owner = uuid.uuid4().hex
            self.claims[key] = (owner, self.clock() + lease_s)
            return Claim(key, owner, self._deletes_of(key.sha256))

    def deletes_of(self, sha256: str) -> DeletesSeen:
        with self._lock:
            return self._deletes_of(sha256)

    def _deletes_of(self, sha256: str) -> DeletesSeen:
        self.marks_read += 1
        running, ticket, _ = self.deletes.get(sha256, (0, "", 0.0))
        return DeletesSeen.now(running, ticket)

    def find_seeing_deletes(
        self, sha256: str, model: str, prompt: str
    ) -> tuple[ImageRecord | None, DeletesSeen]:
        return self.find(sha256, model, prompt), self.deletes_of(sha256)

    def add_seeing_deletes(self, new: NewImageRecord) -> tuple[ImageRecord, bool, DeletesSeen]:
        return self._seeing_deletes(new.sha256, self.add(new))

    def enqueue_seeing_deletes(
        self, new: NewImageRecord, urgent: bool = False
    ) -> tuple[ImageRecord, bool, DeletesSeen]:
        return self._seeing_deletes(new.sha256, self.enqueue(new, urgent))

    def _seeing_deletes(
        self, sha256: str, stored: tuple[ImageRecord, bool]
    ) -> tuple[ImageRecord, bool, DeletesSeen]:
        # Read after the commit: as good as in its transaction (file_may_be_gone).
        record, created = stored
        return record, created, self.deletes_of(sha256) if created else DeletesSeen.unknown()

    def begin_delete(self, sha256: str) -> None:
        with self._lock:
            running, _, _ = self.deletes.get(sha256, (0, "", 0.0))
            self.deletes[sha256] = (running + 1, DeletesSeen.new_ticket(), self.clock())

    def end_delete(self, sha256: str, forget_after_s: float, stale_after_s: float) -> None:
        with self._lock:
            now = self.clock()
            if sha256 in self.deletes:
                running, ticket, _ = self.deletes[sha256]
                self.deletes[sha256] = (max(0, running - 1), ticket, now)
            for digest, (running, _, at) in list(self.deletes.items()):
                if running == 0 and at < now - forget_after_s:
                    del self.deletes[digest]
                elif running > 0 and at < now - stale_after_s:
                    self.deletes[digest] = (0, DeletesSeen.new_ticket(), now)

    def renew(self, claim: Claim, lease_s: float) -> bool:
        with self._lock:
            held = self.claims.get(claim.key)
            if held is None or held[0] != claim.owner:
                return False
            self.claims[claim.key] = (claim.owner, self.clock() + lease_s)
            self.renewals += 1
            return True

    def await_record(self, key: CaptionKey, timeout_s: float) -> ImageRecord | None:
        deadline = self.clock() + timeout_s
        while True:
            record = self.find(key.sha256, key.model, key.prompt)
            with self._lock:
                held = self.claims.get(key)
                now = self.clock()
                if record is not None or held is None or held[1] <= now or now >= deadline:
                    return record
                self._changed.wait(min(deadline, held[1]) - now)

    def complete(self, claim: Claim, new: NewImageRecord) -> tuple[ImageRecord, bool]:
        stored = self.add(new)
        self.abandon(claim)
        return stored

    def complete_seeing_deletes(
        self, claim: Claim, new: NewImageRecord
    ) -> tuple[ImageRecord, bool, DeletesSeen]:
        return self._seeing_deletes(new.sha256, self.complete(claim, new))

    def abandon(self, claim: Claim) -> None:
        with self._lock:
            if self.claims.get(claim.key, ("", 0.0))[0] == claim.owner:
                del self.claims[claim.key]
            self._changed.notify_all()

    def claim_many(self, keys: Sequence[CaptionKey], lease_s: float) -> Mapping[CaptionKey, Claim]:
        owner = uuid.uuid4().hex
        claimed: dict[CaptionKey, Claim] = {}
        with self._lock:
            self.claim_statements += 1
            for key in dict.fromkeys(keys):
                held = self.claims.get(key)
                if held is None or held[1] <= self.clock():
                    self.claims[key] = (owner, self.clock() + lease_s)
                    claimed[key] = Claim(key, owner, self._deletes_of(key.sha256))
        return claimed

    def complete_many(
        self, done: Sequence[tuple[Claim, NewImageRecord]]
    ) -> Sequence[tuple[ImageRecord, bool, DeletesSeen]]:
        with self._lock:
            self.batch_writes += 1
        return [self.complete_seeing_deletes(claim, new) for claim, new in done]

    def find(self, sha256: str, model: str, prompt: str) -> ImageRecord | None:
        with self._lock:
            for row in self.rows.values():
                if (row.sha256, row.model, row.prompt) == (sha256, model, prompt):
                    return row
        return None

    def find_many(self, sha256s: Sequence[str], model: str, prompt: str) -> Sequence[ImageRecord]:
        wanted = set(sha256s)
        with self._lock:
            self.batch_lookups += 1
            return [
                row
                for row in self.rows.values()
                if row.sha256 in wanted and (row.model, row.prompt) == (model, prompt)
            ]

    def captions_of(self, sha256: str) -> Sequence[ImageRecord]:
        with self._lock:
            return sorted((r for r in self.rows.values() if r.sha256 == sha256), key=lambda r: r.id)

    def without_caption(
        self, model: str, prompt: str, after: int = 0, limit: int = 1000
    ) -> Sequence[ImageRecord]:
        with self._lock:
            rows = sorted(self.rows.values(), key=lambda r: r.id)
        done = {r.sha256 for r in rows if (r.model, r.prompt) == (model, prompt)}
        first: dict[str, ImageRecord] = {}
        for row in rows:
            first.setdefault(row.sha256, row)
        waiting = [r for r in first.values() if r.sha256 not in done and r.id > after]
        return waiting[:limit]

    def count_without_caption(self, model: str, prompt: str) -> int:
        return len(self.without_caption(model, prompt, limit=len(self.rows) + 1))

    def models_with_revision(self, revision: str) -> Sequence[str]:
        with self._lock:
            return sorted(
                {r.model for r in self.rows.values() if r.provenance.model_revision == revision}
            )

    def adopt_records(self, aliases: Sequence[str], model: str, revision: str) -> int:
        with self._lock:
            adopted = [
                r
                for r in sorted(self.rows.values(), key=lambda r: r.id)
                if r.model in aliases and r.provenance.model_revision == revision
            ]
            taken = {(r.sha256, r.prompt) for r in self.rows.values() if r.model == model}
            renamed = 0
            for row in adopted:
                if (row.sha256, row.prompt) in taken:  # model's own, or an older alias's
                    del self.rows[row.id]
                else:
                    taken.add((row.sha256, row.prompt))
                    self.rows[row.id] = replace(row, model=model)
                    renamed += 1
            return renamed

    def add(self, new: NewImageRecord) -> tuple[ImageRecord, bool]:
        with self._lock:
            for row in self.rows.values():
                if (row.sha256, row.model, row.prompt) == (new.sha256, new.model, new.prompt):
                    if row.captioned:
                        return row, False
                    # A queued record of the key becomes this caption, as in the catalogues.
                    done = replace(
                        row, **{**vars(new), "path": row.path, "original_name": row.original_name}
                    )
                    self.rows[row.id] = replace(done, failure=None)
                    return self.rows[row.id], True
            record = ImageRecord(
                id=self._next_id,
                created_at=datetime.now(timezone.utc),
                **vars(new),
            )
            self.rows[record.id] = record
            self._next_id += 1
            return record, True

    def replace(self, new: NewImageRecord) -> ImageRecord | None:
        with self._lock:
            if not any(row.sha256 == new.sha256 for row in self.rows.values()):
                return None
            for row in self.rows.values():
                if (row.sha256, row.model, row.prompt) == (new.sha256, new.model, new.prompt):
                    kept = replace(
                        row,
                        description=new.description,
                        provenance=new.provenance,
                        duration_ms=new.duration_ms,
                        created_at=datetime.now(timezone.utc),
                    )
                    self.rows[row.id] = kept
                    return kept
            record = ImageRecord(
                id=self._next_id, created_at=datetime.now(timezone.utc), **vars(new)
            )
            self.rows[record.id] = record
            self._next_id += 1
            return record

    def delete_captions(self, sha256: str, model: str) -> Sequence[ImageRecord]:
        with self._lock:
            mine = [r for r in self.rows.values() if r.sha256 == sha256]
            if all(r.model == model for r in mine):
                return []
            gone = sorted((r for r in mine if r.model == model), key=lambda r: r.id)
            for record in gone:
                del self.rows[record.id]
            return gone

    def get(self, record_id: int) -> ImageRecord | None:
        self.gets += 1
        return self.rows.get(record_id)

    def list(
        self,
        limit: int,
        before: int | None = None,
        query: str | None = None,
        shown: CaptionChoice | None = None,
    ) -> Sequence[ListedImage]:
        choice = shown or CaptionChoice(model="", prompt="")
        with self._lock:
            rows = sorted(self.rows.values(), key=lambda r: r.id)
        by_image: dict[str, list[ImageRecord]] = {}
        for row in rows:
            by_image.setdefault(row.sha256, []).append(row)
        entries = []
        for captions in by_image.values():
            record = shown_caption(captions, choice)
            image_id = captions[0].id
            if record is None or (before is not None and image_id >= before):
                continue
            if query is not None:
                words = query.lower().split()
                if not all(w in record.description.lower() for w in words):
                    continue
            entries.append(ListedImage(record, image_id, len(captions)))
        entries.sort(key=lambda e: e.image_id, reverse=True)
        return entries[:limit]

    def models(self) -> Sequence[ModelCaptions]:
        with self._lock:
            images: dict[str, set[str]] = {}
            for row in self.rows.values():
                images.setdefault(row.model, set()).add(row.sha256)
        return [ModelCaptions(model, len(images[model])) for model in sorted(images)]

    def delete(self, record_id: int) -> ImageRecord | None:
        with self._lock:
            return self.rows.pop(record_id, None)

    def delete_image(self, sha256: str) -> Sequence[ImageRecord]:
        with self._lock:
            gone = sorted((r for r in self.rows.values() if r.sha256 == sha256), key=lambda r: r.id)
            for record in gone:
                del self.rows[record.id]
            return gone

    def count_with_path(self, path: str) -> int:
        return sum(1 for r in self.rows.values() if r.path == path)

    def all_records(self) -> Iterator[ImageRecord]:
        yield from sorted(self.rows.values(), key=lambda r: r.id)

    def readiness(self) -> Readiness:
        return Readiness.ok()

    def close(self) -> None:
        pass  # nothing held open

    # --- the caption queue ---

    def enqueue(self, new: NewImageRecord, urgent: bool = False) -> tuple[ImageRecord, bool]:
        existing = self.find(new.sha256, new.model, new.prompt)
        if existing is not None:
            if urgent and existing.status == PENDING:
                self.urgent.add(existing.id)
            return existing, False
        record, created = self.add(replace(new, status=PENDING))
        if urgent:
            self.urgent.add(record.id)
        return record, created

    def take(self, model: str, lease_s: float, limit: int) -> Sequence[QueuedCaption]:
        now = self.clock()
        with self._lock:
            due = sorted(
                (
                    r
                    for r in self.rows.values()
                    if r.status == PENDING and r.model == model and self.due_at.get(r.id, 0) <= now
                ),
                key=lambda r: (r.id not in self.urgent, r.id),
            )
        taken: list[QueuedCaption] = []
        for record in due:
            if len(taken) == limit:
                break
            claim = self.claim(CaptionKey(record.sha256, record.model, record.prompt), lease_s)
            if claim is not None:
                taken.append(QueuedCaption(record, claim))
        return taken

    def finish(self, done: Sequence[CaptionDone]) -> Sequence[ImageRecord]:
        kept = []
        with self._lock:
            for item in done:
                row = self.rows.get(item.record_id)
                if row is not None and not row.captioned:
                    self.rows[row.id] = replace(
                        row,
                        description=item.description,
                        status=CAPTIONED,
                        failure=None,
                        provenance=item.provenance,
                        duration_ms=item.duration_ms,
                    )
                    kept.append(self.rows[row.id])
        for item in done:
            self.abandon(item.claim)
        return kept

    def fail(
        self, item: QueuedCaption, reason: str, max_attempts: int, retry_in_s: float
    ) -> ImageRecord | None:
        with self._lock:
            row = self.rows.get(item.record.id)
            if row is not None and row.status == PENDING:
                attempts = row.attempts + 1
                status = FAILED if attempts >= max_attempts else PENDING
                row = replace(row, attempts=attempts, failure=reason, status=status)
                self.rows[row.id] = row
                self.due_at[row.id] = self.clock() + retry_in_s
            else:
                row = None
        self.abandon(item.claim)
        return row

    def release(self, claims: Sequence[Claim]) -> None:
        for claim in claims:
            self.abandon(claim)

    def await_settled(self, key: CaptionKey, timeout_s: float) -> ImageRecord | None:
        deadline = self.clock() + timeout_s
        while True:
            record = self.find(key.sha256, key.model, key.prompt)
            now = self.clock()
            if record is None or record.status != PENDING or now >= deadline:
                return record
            with self._lock:
                self._changed.wait(min(0.05, deadline - now))

    def queue_status(self, alive_s: float, count_captioned: bool = True) -> QueueStatus:
        now = self.clock()
        with self._lock:
            rows = list(self.rows.values())
            workers = tuple(
                WorkerSeen(name, model, now - seen)
                for name, (model, seen) in sorted(self.workers.items())
                if now - seen < alive_s
            )
        counts: dict[str, int] = {CAPTIONED: 0, PENDING: 0, FAILED: 0}
        for row in rows:
            counts[row.status] += 1
        pending = [r.created_at for r in rows if r.status == PENDING]
        age = (datetime.now(timezone.utc) - min(pending)).total_seconds() if pending else None
        if not count_captioned:
            del counts[CAPTIONED]
        return QueueStatus(counts, age, workers)

    def heartbeat(self, name: str, model: str) -> None:
        with self._lock:
            self.workers[name] = (model, self.clock())

    def forget_worker(self, name: str) -> None:
        with self._lock:
            self.workers.pop(name, None)

    def jobs(self, status: str | None = None, limit: int = 1000) -> Sequence[ImageRecord]:
        wanted = {status} if status else {PENDING, FAILED}
        return [r for r in self.all_records() if r.status in wanted][:limit]

    def retry(self, record_id: int | None = None) -> int:
        retried = 0
        with self._lock:
            for row in list(self.rows.values()):
                if row.status == FAILED and record_id in (None, row.id):
                    self.rows[row.id] = replace(row, status=PENDING, attempts=0, failure=None)
                    self.due_at.pop(row.id, None)
                    retried += 1
        return retried

    def corrupt(self, record_id: int, **changes: object) -> None:
        self.rows[record_id] = replace(self.rows[record_id], **changes)  # type: ignore[arg-type]


class RecordingCaptioner:
    """A Captioner for the real image decoder: keeps every DecodedImage it is handed.

    Unlike FakeCaptioner it accepts any pixels (PIL images from the Pillow decoder), so tests
    can check what the model would see; it can be slow, or fail like a buggy adapter.
    """

    def __init__(
        self, model_name: str = "recording-model", delay_s: float = 0.0, edge: int | None = None
    ) -> None:
        self._model_name = model_name
        self.delay_s = delay_s
        self.edge = edge  # the short edge it asks images to be decoded at (None: every pixel)
        self.images: list[DecodedImage] = []
        self.fail_with: Exception | None = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def call_count(self) -> int:
        with self._lock:
            return len(self.images)

    @property
    def provenance(self) -> Provenance:
        return Provenance.of(None, {})

    def readiness(self) -> Readiness:
        return Readiness.ok()

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        return Readiness.ok()

    def wanted_edge(self) -> int | None:
        return self.edge

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        with self._lock:
            self.images.append(image)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        text = f"{prompt} a {image.format} picture {image.width}x{image.height}".strip()
        return Caption(text, self.delay_s * 1000)


class FakeBatchModel:
    """A BatchCaptioner (what BatchingCaptioner wraps) that records each batch by image name.

    ``started`` is set when a batch reaches the model; while ``release`` is clear (``hold()``)
    the model sits on that batch, which is how tests fill the queue or outlast the caption
    timeout. Images named in ``bad`` fail their batch; those in ``held_prepare`` stay in
    ``prepare`` (on the caller's thread) until ``prepare_release`` is set. ``begun`` lists the
    images the model started on early (``begin``); while ``begin_release`` is clear the model
    sits in ``begin``, and images named in ``bad_begin`` make it raise.
    """

    def __init__(self, model_name: str = "fake-batch-model", delay_s: float = 0.0) -> None:
        self._model_name = model_name
        self.delay_s = delay_s
        self.batches: list[list[str]] = []
        self.bad: set[str] = set()
        self.held_prepare: set[str] = set()
        self.preparing = threading.Event()  # set when a held prepare begins
        self.prepare_release = threading.Event()
        self.prepared: list[str] = []
        self.prepare_threads: list[str] = []
        self.batch_threads: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.begun: list[str] = []
        self.begin_threads: list[str] = []
        self.bad_begin: set[str] = set()
        self.beginning = threading.Event()  # set when a begin starts
        self.begin_release = threading.Event()
        self.begin_release.set()
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def batch_sizes(self) -> list[int]:
        with self._lock:
            return [len(batch) for batch in self.batches]

    @property
    def images_described(self) -> int:
        return sum(self.batch_sizes)

    @property
    def provenance(self) -> Provenance:
        return Provenance.of("batch-revision", {"max_new_tokens": 8})

    def hold(self) -> None:
        """Keep the next batch in the model until ``release`` is set."""
        self.started.clear()
        self.release.clear()

    def readiness(self) -> Readiness:
        return Readiness.ok()

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        return Readiness.ok()

    def wanted_edge(self) -> int | None:
        return None

    def prepare(self, image: DecodedImage) -> DecodedImage:
        name = _name_of(image)
        with self._lock:
            self.prepare_threads.append(threading.current_thread().name)
        if name in self.held_prepare:
            self.preparing.set()
            self.prepare_release.wait(timeout=30)
        with self._lock:
            self.prepared.append(name)
        return replace(image, pixels=f"prepared {name}")

    def begin(self, image: DecodedImage, prompt: str) -> None:
        name = _name_of(image)
        self.beginning.set()
        self.begin_release.wait(timeout=30)
        with self._lock:
            self.begin_threads.append(threading.current_thread().name)
            self.begun.append(name)
        if name in self.bad_begin:
            raise RuntimeError("the encoder choked on this image")

    def describe_batch(self, images: Sequence[tuple[DecodedImage, str]]) -> list[str]:
        names = [_name_of(image) for image, _ in images]
        with self._lock:
            self.batches.append(names)
            self.batch_threads.append(threading.current_thread().name)
        self.started.set()
        self.release.wait(timeout=30)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.bad.intersection(names):
            raise RuntimeError("this batch holds a bad image")
        return [
            f"{prompt} caption of {name}".strip()
            for name, (_, prompt) in zip(names, images, strict=True)
        ]


def _name_of(image: DecodedImage) -> str:
    """The test's name for an image: its pixels, as text, whether prepared or not."""
    pixels = image.pixels
    text = pixels.decode(errors="replace") if isinstance(pixels, bytes) else str(pixels)
    return text.removeprefix("prepared ")


class World:
    """The service over in-memory fakes of every port: what the domain's unit tests drive."""

    def __init__(
        self, delay_s: float = 0.0, max_upload_bytes: int = 1000, with_thumbnails: bool = True
    ) -> None:
        self.captioner = FakeCaptioner(delay_s=delay_s)
        self.store = InMemoryImageStore()
        self.repository = InMemoryCaptionRepository()
        self.thumbnails = InMemoryThumbnailStore()
        self.service = CaptionService(
            self.captioner,
            FakeImageDecoder(),
            self.store,
            self.repository,
            max_upload_bytes=max_upload_bytes,
            thumbnails=self.thumbnails if with_thumbnails else None,
            queue=self.repository,
        )

    def upload(self, data: bytes, name: str | None = "photo.jpg", prompt: str = "") -> Description:
        return self.service.describe(ImageUpload(io.BytesIO(data), name, prompt))

    def add(self, data: bytes, prompt: str = "") -> int:
        """Upload ``data`` as a.png; the new (or stored) record's id."""
        return self.upload(data, "a.png", prompt).record.id


class ModelLoads:
    """Counts, across containers, the models built and the models loaded."""

    def __init__(self) -> None:
        self.built = 0
        self.loaded = 0


class LoadCountingModel(FakeBatchModel):
    """A FakeBatchModel that loads like the real one: not when built, but when waited for."""

    def __init__(self, model_name: str, loads: ModelLoads) -> None:
        super().__init__(model_name)
        self._loads = loads
        self._loaded = False
        loads.built += 1

    @property
    def provenance(self) -> Provenance:
        # As the real one: the weights' revision is known once they are loaded.
        return super().provenance if self._loaded else Provenance.of(None, {})

    def readiness(self) -> Readiness:
        return Readiness.ok() if self._loaded else Readiness(False, "the model is not loaded")

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        if not self._loaded:
            self._loaded = True
            self._loads.loaded += 1
        return Readiness.ok()

    def describe_batch(self, images: Sequence[tuple[DecodedImage, str]]) -> list[str]:
        if not self._loaded:
            raise CaptionerUnavailable("The model is not loaded.")
        return super().describe_batch(images)
