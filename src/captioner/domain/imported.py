"""Captions brought in from elsewhere (sidecars, another captioner's export), kept for an
image's bytes without running the model; a different caption already kept is a conflict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import BinaryIO, Literal

from captioner.domain.errors import InvalidRequest
from captioner.domain.model import (
    PERSON_MODEL,
    ImageDigest,
    ImageRecord,
    ImageUpload,
    NewImageRecord,
    Provenance,
)
from captioner.domain.one_run_per_key import BytesLocks, keep_file_after_commit
from captioner.domain.ports import CaptionRepository, ImageDecoder, ImageStore
from captioner.domain.rules import clean_original_name, clean_prompt

# added: kept now; unchanged: the same words were kept already; conflict: other words are
# kept under the same key and stay (never overwritten).
ImportStatus = Literal["added", "unchanged", "conflict"]


@dataclass(frozen=True)
class ImportedCaption:
    """A caption found outside the catalogue and who wrote it.

    ``model`` is PERSON_MODEL for words a person wrote (then ``prompt`` is ignored: a person
    caption is kept under the default prompt). ``sha256``, when the source names the bytes it
    describes, must be the bytes' digest: a caption of other bytes is refused.
    """

    text: str
    model: str = PERSON_MODEL
    prompt: str = ""
    provenance: Provenance = field(default_factory=Provenance)
    duration_ms: float | None = None
    sha256: str | None = None
    by: str = "import"


@dataclass(frozen=True)
class ImportOutcome:
    """What importing one caption did, and the record now kept under its key."""

    record: ImageRecord
    status: ImportStatus


class CaptionImports:
    """Keeps imported captions: the image's bytes in the store, the caption in the catalogue."""

    def __init__(
        self,
        decoder: ImageDecoder,
        store: ImageStore,
        repository: CaptionRepository,
        bytes_locks: BytesLocks,
        default_prompt: str,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._decoder = decoder
        self._store = store
        self._repository = repository
        self._bytes_locks = bytes_locks
        self._default_prompt = default_prompt
        self._now = now

    def keep(
        self, upload: ImageUpload, digest: ImageDigest, caption: ImportedCaption
    ) -> ImportOutcome:
        text = caption.text.strip()
        if not text:
            raise InvalidRequest("The caption is empty: nothing to import.")
        if caption.sha256 is not None and caption.sha256 != digest.hex:
            raise InvalidRequest(
                f"The caption describes other bytes (sha256 {caption.sha256[:12]}, the file's "
                f"is {digest.hex[:12]}): the image changed since it was captioned; not imported."
            )
        person = caption.model == PERSON_MODEL
        prompt = self._default_prompt if person else clean_prompt(caption.prompt)
        known, deletes = self._repository.find_seeing_deletes(digest.hex, caption.model, prompt)
        if known is not None:
            return ImportOutcome(known, _compared(known, text))
        image = self._decoder.decode(_from_start(upload.content))
        provenance = caption.provenance
        if person and not provenance.generation:
            provenance = Provenance.of(
                None,
                {"source": "person", "by": caption.by, "at": self._now().isoformat()},
            )
        with self._bytes_locks.of(digest.hex):
            path = self._store.save(
                digest, _from_start(upload.content), image.extension, upload.local_path
            )
            record, created, committed = self._repository.add_seeing_deletes(
                NewImageRecord(
                    sha256=digest.hex,
                    path=path,
                    description=text,
                    model=caption.model,
                    prompt=prompt,
                    width=image.width,
                    height=image.height,
                    content_type=image.content_type,
                    original_name=clean_original_name(upload.original_name),
                    provenance=provenance,
                    duration_ms=caption.duration_ms,
                )
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
        return ImportOutcome(record, "added" if created else _compared(record, text))


def _compared(kept: ImageRecord, text: str) -> ImportStatus:
    # Whitespace differences are not a different caption.
    return (
        "unchanged" if " ".join(kept.description.split()) == " ".join(text.split()) else "conflict"
    )


def _from_start(stream: BinaryIO) -> BinaryIO:
    stream.seek(0)
    return stream
