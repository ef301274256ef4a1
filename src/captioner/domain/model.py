"""Value objects of the domain: images as stored, their descriptions, what a describe returns."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Literal

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20

# A generation setting's value: what JSON can hold without nesting.
SettingValue = str | int | float | bool | None

# A record's status: captioned (the description is the model's), pending (queued, the
# description is empty until a worker captions it), failed (the model failed on it
# max_attempts times; ``failure`` says why).
RecordStatus = Literal["captioned", "pending", "failed"]
CAPTIONED: RecordStatus = "captioned"
PENDING: RecordStatus = "pending"
FAILED: RecordStatus = "failed"


def record_status(text: str) -> RecordStatus:
    """A stored status as the type says it can only be (a catalogue's column)."""
    for status in (CAPTIONED, PENDING, FAILED):
        if text == status:
            return status
    raise ValueError(f"not a record status: {text!r}")


# The `model` of a caption a person wrote (an edit, or an import without captioner's
# provenance): its key is (sha256, PERSON_MODEL, default prompt).
PERSON_MODEL = "person"


@dataclass(frozen=True)
class ImageDigest:
    """The SHA-256 of an image's bytes: its identity on disk and the deduplication key."""

    hex: str

    def __post_init__(self) -> None:
        if not _SHA256_HEX.match(self.hex):
            raise ValueError(f"not a lowercase SHA-256 hex digest: {self.hex!r}")

    @classmethod
    def of_bytes(cls, data: bytes) -> ImageDigest:
        return cls(hashlib.sha256(data).hexdigest())

    @classmethod
    def of_stream(cls, stream: BinaryIO) -> ImageDigest:
        """Hash a stream in chunks; it arrives at position 0 and is left at its end."""
        digest = hashlib.sha256()
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
        return cls(digest.hexdigest())

    def __str__(self) -> str:
        return self.hex


@dataclass(frozen=True)
class ImageUpload:
    """An image as a client hands it in: its bytes (a seekable stream) and what it said about them.

    ``digest`` may be given when the caller already hashed exactly these bytes while
    receiving them (it is trusted: the file is stored under it); otherwise the service
    hashes the stream. ``original_name`` is metadata only: it never
    decides where or how the file is stored. ``local_path`` may name a file on this machine
    holding exactly these bytes while ``content`` is open (a spooled upload): a store on the
    same disk may link it into place instead of copying the bytes.
    """

    content: BinaryIO
    original_name: str | None = None
    prompt: str = ""
    digest: ImageDigest | None = None
    local_path: str | None = None


@dataclass(frozen=True)
class DecodedImage:
    """An upload that decoded as an allowed image, with what its bytes (not its name) say it is.

    ``pixels`` belongs to the image decoder and the captioner: the domain passes it from one
    to the other without looking inside.
    """

    format: str
    content_type: str
    extension: str
    width: int
    height: int
    pixels: object


@dataclass(frozen=True)
class Provenance:
    """Where a caption comes from: the exact weights, and the settings they were run with.

    ``model_revision`` is the hub commit of the loaded weights, a content hash of a local
    model directory (``sha256:<hex>``), or what a model server reports; None when unknown
    (captions stored before provenance was kept). ``generation`` holds the settings, sorted
    by name (max_new_tokens, num_beams, prompt, ...); empty when they were not recorded.
    """

    model_revision: str | None = None
    generation: tuple[tuple[str, SettingValue], ...] = ()

    @classmethod
    def of(cls, model_revision: str | None, generation: Mapping[str, SettingValue]) -> Provenance:
        return cls(model_revision, tuple(sorted(generation.items())))

    def with_setting(self, name: str, value: SettingValue) -> Provenance:
        return Provenance.of(self.model_revision, {**self.settings, name: value})

    @property
    def settings(self) -> dict[str, SettingValue]:
        return dict(self.generation)


@dataclass(frozen=True)
class Caption:
    """What the model said about one image, and how long the model ran for it.

    ``duration_ms`` is model time: for a batched model it is the whole batch's generate
    (every image of a batch shares it), never the time spent waiting in the queue.
    """

    text: str
    duration_ms: float


@dataclass(frozen=True)
class ImageRecord:
    """A stored image and the description one model gave it (one row of the catalogue)."""

    id: int
    sha256: str
    path: str
    description: str
    model: str
    prompt: str
    created_at: datetime
    width: int
    height: int
    content_type: str
    original_name: str | None
    provenance: Provenance = field(default_factory=Provenance)
    duration_ms: float | None = None  # the model run's; None when not recorded
    status: RecordStatus = CAPTIONED
    failure: str | None = None  # the last model error while queued (why it failed)
    attempts: int = 0  # model runs that failed on it while queued

    @property
    def captioned(self) -> bool:
        return self.status == CAPTIONED

    @property
    def source(self) -> Literal["person", "model"]:
        """Who wrote the caption: "person" (an edit) or "model"."""
        return "person" if self.model == PERSON_MODEL else "model"


@dataclass(frozen=True)
class NewImageRecord:
    """What the service asks the repository to keep; the repository assigns id and time."""

    sha256: str
    path: str
    description: str
    model: str
    prompt: str
    width: int
    height: int
    content_type: str
    original_name: str | None
    provenance: Provenance = field(default_factory=Provenance)
    duration_ms: float | None = None
    status: RecordStatus = CAPTIONED


@dataclass(frozen=True)
class CaptionKey:
    """What makes a caption unique: the bytes, the model and the prompt."""

    sha256: str
    model: str
    prompt: str


@dataclass(frozen=True)
class DeletesSeen:
    """What the catalogue said, at one moment, of the deletes of some bytes: how many were
    in flight, and the ticket the latest one to begin left ("" when none is on record).

    ``at`` is this process's monotonic clock when it was read; ``running`` is -1 when
    nothing was read (an upload then re-checks its file, as without the marks).
    """

    running: int
    ticket: str
    at: float

    @staticmethod
    def now(running: int, ticket: str) -> DeletesSeen:
        return DeletesSeen(running, ticket, time.monotonic())

    @staticmethod
    def unknown() -> DeletesSeen:
        return DeletesSeen(-1, "", time.monotonic())

    @staticmethod
    def new_ticket() -> str:
        """A ticket no delete has left before (random, as claims' owners are)."""
        return uuid.uuid4().hex


@dataclass(frozen=True)
class Claim:
    """The right to run the model for one key, held by one owner until it completes or abandons.

    A claim is leased: an owner that stops renewing it (killed, machine lost) loses it when
    the lease runs out, and the next asker takes it over. ``deletes`` is what the claim's
    statement saw of deletes of the key's bytes (unknown where the catalogue did not say).
    """

    key: CaptionKey
    owner: str
    deletes: DeletesSeen = field(default_factory=DeletesSeen.unknown, compare=False)

    @staticmethod
    def new_owner() -> str:
        """A name for a new claim: which machine and process holds it (for people), and a nonce."""
        return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Description:
    """The answer to a describe: the record, and whether it came from storage."""

    record: ImageRecord
    duplicate: bool


@dataclass(frozen=True)
class CaptionChoice:
    """Which caption a listing shows for each image.

    ``model`` and ``prompt`` name the preferred caption (the configured model and default
    prompt, or the model asked for); ``only_model`` leaves out images that model never
    described and never shows another model's caption.
    """

    model: str
    prompt: str
    only_model: bool = False


def caption_rank(record: ImageRecord, choice: CaptionChoice) -> tuple[bool, bool, int]:
    """How strongly a caption competes to be shown for its image: the largest wins.

    The one rule for an image's current caption: a person's caption first (a correction beats
    any model), then the preferred (model, prompt), then the newest. The catalogues' SQL orders
    by exactly these keys (their ``_shown_caption``).
    """
    return (
        record.model == PERSON_MODEL,
        record.model == choice.model and record.prompt == choice.prompt,
        record.id,
    )


def shown_caption(captions: Iterable[ImageRecord], choice: CaptionChoice) -> ImageRecord | None:
    """The caption a listing shows for one image's captions; None when none qualifies."""
    eligible = [c for c in captions if not choice.only_model or c.model == choice.model]
    return max(eligible, key=lambda c: caption_rank(c, choice), default=None)


@dataclass(frozen=True)
class ListedImage:
    """One entry of a listing: an image (distinct bytes) with the caption it is shown with.

    ``image_id`` is the id of the image's first record (its first upload): listings are
    ordered by it and page on it, so a re-caption neither moves nor repeats an image.
    ``captions`` counts every caption of the image (all models and prompts).
    """

    record: ImageRecord
    image_id: int
    captions: int


@dataclass(frozen=True)
class ModelCaptions:
    """A model present in the catalogue and how many images it described."""

    model: str
    images: int


@dataclass(frozen=True)
class ImagePage:
    """One page of a listing, one entry per image, newest image first; ``next_before`` is the
    cursor for the next page."""

    entries: tuple[ListedImage, ...]
    next_before: int | None

    @property
    def records(self) -> tuple[ImageRecord, ...]:
        """The caption shown for each image of the page."""
        return tuple(entry.record for entry in self.entries)


@dataclass(frozen=True)
class KnownImages:
    """The answer to "which of these digests are described already?" (model + prompt given).

    ``records`` maps each known digest to its record; ``unknown`` keeps the asked order.
    """

    records: Mapping[str, ImageRecord]
    unknown: tuple[str, ...]


@dataclass(frozen=True)
class Thumbnail:
    """A small preview of a stored image: its bytes (an open stream) and their media type."""

    content: BinaryIO
    content_type: str


@dataclass(frozen=True)
class Readiness:
    """Whether a part can serve now and, when it cannot, why (for /readyz and the logs)."""

    ready: bool
    reason: str = ""
    # A fault only a change of settings and a restart can cure (no point retrying).
    permanent: bool = False

    @classmethod
    def ok(cls) -> Readiness:
        return cls(True, "")


@dataclass(frozen=True)
class QueuedCaption:
    """A pending caption a worker has taken from the queue, under a leased claim."""

    record: ImageRecord
    claim: Claim


@dataclass(frozen=True)
class CaptionDone:
    """What a worker keeps for a queued caption: the model's text and where it came from."""

    claim: Claim
    record_id: int
    description: str
    provenance: Provenance
    duration_ms: float


@dataclass(frozen=True)
class WorkerSeen:
    """A queue worker as its heartbeat row tells it: who, which model, how long ago."""

    name: str
    model: str
    seen_s_ago: float


@dataclass(frozen=True)
class QueueStatus:
    """The queue at a glance: records by status, the oldest pending one's age, live workers."""

    counts: Mapping[str, int]
    oldest_pending_age_s: float | None
    workers: tuple[WorkerSeen, ...]

    @property
    def pending(self) -> int:
        return self.counts.get(PENDING, 0)


@dataclass(frozen=True)
class CatalogueSnapshot:
    """A point-in-time copy of the catalogue written to a file: what it holds, in counts,
    and the stored paths of the image files its records need."""

    engine: str  # "sqlite" or "postgres": which catalogue can take it back
    schema_version: int
    records: int  # every caption record (one per image, model and prompt)
    images: int  # distinct image bytes
    keys: int
    paths: frozenset[str]
